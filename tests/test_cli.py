"""CLI options map onto the settings, and bad option values fail with a message naming them."""

from pathlib import Path

from click.testing import CliRunner

from trtcompile.cli import calibration_settings, cli

DATA = Path(__file__).parent / "data"


def test_bad_smoothquant_alpha_is_refused_before_any_work(tmp_path):
    result = CliRunner().invoke(cli, ["compile", str(tmp_path / "missing"), "-o", str(tmp_path / "o"),
                                      "--smoothquant-alpha", "2"])
    assert result.exit_code == 2
    assert "--smoothquant-alpha" in result.output and "'2' is not a number in [0, 1], 'auto' or 'off'" in result.output


def test_int8_options_map_onto_calibration_settings():
    ctx = cli.commands["compile"].make_context(
        "compile", ["m", "-o", "o", "--precision", "int8", "--calibration-data", "c.txt", "--smoothquant-alpha", "off",
                    "--exclude-node", "a", "--exclude-node", "b", "--int8-fallback", "fp16", "--int8-attention",
                    "--calibration-method", "percentile", "--accuracy-target", "0.999"])
    settings = calibration_settings(**ctx.params)
    assert settings.smoothquant_alpha is None and settings.exclude_nodes == ("a", "b")
    assert settings.float_precision == "fp16" and settings.int8_attention and settings.method == "percentile"
    assert settings.accuracy_target == 0.999 and settings.data == Path("c.txt")
    defaults = calibration_settings(**cli.commands["compile"].make_context("compile", ["m", "-o", "o"]).params)
    assert defaults.smoothquant_alpha == "auto" and defaults.method == "minmax"


def test_int8_without_calibration_data(checkpoint, tmp_path):
    result = CliRunner().invoke(cli, ["compile", str(checkpoint("bert")), "-o", str(tmp_path / "o"), "-q",
                                      "--profile", str(DATA / "tiny-encoder.yaml"), "--precision", "int8"])
    assert result.exit_code == 1
    assert "--precision int8 needs calibration data" in result.output and "--calibration-data" in result.output
    assert not (tmp_path / "o").exists()


def test_kv_cache_options_map_onto_export_settings():
    from trtcompile.cli import export_settings

    ctx = cli.commands["compile"].make_context(
        "compile", ["m", "-o", "o", "--kv-cache", "concat", "--kv-cache-dtype", "fp16", "--all-logits"])
    settings = export_settings(**ctx.params)
    assert (settings.kv_cache, settings.kv_cache_dtype, settings.all_logits) == ("concat", "fp16", True)
    defaults = export_settings(**cli.commands["compile"].make_context("compile", ["m", "-o", "o"]).params)
    assert (defaults.kv_cache, defaults.kv_cache_dtype, defaults.all_logits) == ("static", "auto", False)
    result = CliRunner().invoke(cli, ["compile", "m", "-o", "o", "--kv-cache", "ring"])
    assert result.exit_code == 2 and "--kv-cache" in result.output and "'ring' is not one of" in result.output

def test_int4_options_map_onto_calibration_settings():
    ctx = cli.commands["compile"].make_context(
        "compile", ["m", "-o", "o", "--precision", "int4", "--int4-method", "rtn", "--int4-block-size", "64",
                    "--int4-asymmetric", "--int4-lm-head", "--int4-activations", "fp32"])
    settings = calibration_settings(**ctx.params)
    assert settings.int4_method == "rtn" and settings.int4_block_size == 64 and not settings.int4_symmetric
    assert settings.int4_lm_head and settings.int4_activations == "fp32"
    defaults = calibration_settings(**cli.commands["compile"].make_context("compile", ["m", "-o", "o"]).params)
    assert (defaults.int4_method, defaults.int4_block_size, defaults.int4_symmetric, defaults.int4_lm_head,
            defaults.int4_activations) == ("awq", 128, True, False, "fp16")


def test_weight_rounding_and_int4_gptq_options():
    ctx = cli.commands["compile"].make_context(
        "compile", ["m", "-o", "o", "--precision", "int8", "--weight-rounding", "nearest"])
    assert calibration_settings(**ctx.params).weight_rounding == "nearest"
    defaults = calibration_settings(**cli.commands["compile"].make_context("compile", ["m", "-o", "o"]).params)
    assert defaults.weight_rounding == "gptq"
    ctx = cli.commands["compile"].make_context("compile", ["m", "-o", "o", "--precision", "int4", "--int4-method", "gptq"])
    assert calibration_settings(**ctx.params).int4_method == "gptq"
    assert not defaults.fp8_lm_head  # FP8 keeps the LM head float unless asked
    ctx = cli.commands["compile"].make_context("compile", ["m", "-o", "o", "--precision", "fp8", "--fp8-lm-head"])
    assert calibration_settings(**ctx.params).fp8_lm_head


def test_weight_rounding_only_for_int8_fp8(tmp_path):
    result = CliRunner().invoke(cli, ["compile", str(tmp_path / "missing"), "-o", str(tmp_path / "o"),
                                      "--precision", "fp16", "--weight-rounding", "nearest"])
    assert result.exit_code == 1 and "--weight-rounding applies only to --precision int8/fp8" in result.output
    assert "Traceback" not in result.output


def test_int4_block_size_is_checked_before_any_work(tmp_path):
    result = CliRunner().invoke(cli, ["compile", str(tmp_path / "missing"), "-o", str(tmp_path / "o"),
                                      "--precision", "int4", "--int4-block-size", "48"])
    assert result.exit_code == 2 and "--int4-block-size" in result.output and "48" in result.output


def test_int4_awq_without_calibration_data(checkpoint, tmp_path):
    # (fp8 goes through the same check as int8, above)
    for options, message in ((["--precision", "int4"], "--int4-method awq needs calibration data"),):
        result = CliRunner().invoke(cli, ["compile", str(checkpoint("bert")), "-o", str(tmp_path / "o"), "-q",
                                          "--profile", str(DATA / "tiny-encoder.yaml"), *options])
        assert result.exit_code == 1 and message in result.output and "--calibration-data" in result.output
        assert "Traceback" not in result.output and not (tmp_path / "o").exists()
