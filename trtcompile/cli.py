"""The `trtcompile` command. Each command parses options, calls the library, prints.

Heavy imports (torch, onnx, tensorrt) happen inside the commands, so `--help` is instant and works
on a machine with none of them installed.
"""

from __future__ import annotations

from pathlib import Path

import click

from trtcompile import __version__
from trtcompile.cli_errors import command_options, exit_on_sigterm, progress, user_errors, verbosity  # noqa: F401 - user_errors for add-ons

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", "fp8")


def _options(*decorators):
    def apply(fn):
        for deco in reversed(decorators):
            fn = deco(fn)
        return fn
    return apply


export_options = _options(
    click.option("--profile", type=click.Path(path_type=Path), help="Profile YAML (shapes and buckets); "
                 "default: derived from the model's config."),
    click.option("--opset", type=int, help="ONNX opset: 18..24 with dynamo (default 23), <= 20 with "
                 "--legacy-exporter (default 20)."),
    click.option("--legacy-exporter", is_flag=True, help="Use the TorchScript exporter (opset <= 20)."),
    click.option("--trust-remote-code", is_flag=True, help="Run the Python code a checkpoint ships (config.json "
                 "auto_map). Off by default: read that code first."),
    click.option("--kv-cache", type=click.Choice(("static", "concat")), default="static", show_default=True,
                 help="Causal LMs: 'static' = a fixed-size cache updated in place (TensorScatter, opset 24, "
                      "TensorRT >= 10.15); 'concat' = past + new concatenated each step (older TensorRT)."),
    click.option("--kv-cache-dtype", type=click.Choice(("auto", "fp32", "fp16", "bf16")), default="auto",
                 show_default=True, help="Causal LMs: precision of the static KV cache (auto = the weights')."),
    click.option("--all-logits", is_flag=True,
                 help="Causal LMs: logits for every position (default: each row's last, what generation reads)."),
)
optimize_options = _options(
    click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True),
    click.option("--disable-pass", "disabled_passes", multiple=True, metavar="NAME",
                 help="Skip a pass (repeatable); `trtcompile inspect` lists pass names."),
    click.option("--keep-io-fp32/--no-keep-io-fp32", default=True, show_default=True,
                 help="Keep graph inputs/outputs FP32 at lower precision."),
    click.option("--calibration-data", type=click.Path(path_type=Path),
                 help="INT8: .npz of inputs, or a text file (tokenized with the model's tokenizer)."),
    click.option("--calibration-method", type=click.Choice(("minmax", "percentile", "entropy", "mse")),
                 default="minmax", show_default=True),
    click.option("--calibration-samples", type=click.IntRange(min=1), default=64, show_default=True),
    click.option("--smoothquant-alpha", default="auto", show_default=True, metavar="ALPHA|auto|off",
                 callback=lambda ctx, param, value: _smoothquant(value),
                 help="INT8: SmoothQuant migration strength in [0, 1], 'auto' (searched per layer) or 'off'."),
    click.option("--accuracy-target", type=float,
                 help="INT8/FP8: minimum mean cosine (encoders) / top-1 agreement (LMs) vs FP32; the most "
                      "sensitive layers fall back until it holds. INT4: fail below it."),
    click.option("--int8-attention", is_flag=True, help="INT8: also quantize unfused attention MatMuls."),
    click.option("--exclude-node", "exclude_nodes", multiple=True, metavar="NAME",
                 help="INT8: keep this MatMul/Gemm out of INT8 (repeatable)."),
    click.option("--int8-fallback", "float_precision", type=click.Choice(("fp32", "fp16")), default="fp32",
                 show_default=True, help="INT8/FP8: precision of everything not quantized."),
    click.option("--weight-rounding", type=click.Choice(("gptq", "nearest")), default="gptq", show_default=True,
                 help="INT8/FP8: round weights with GPTQ (error compensated on the calibration data) or to nearest."),
    click.option("--int4-method", type=click.Choice(("awq", "gptq", "rtn")), default="awq", show_default=True,
                 help="INT4: activation-aware scales + clip search (awq) or + GPTQ rounding (gptq), both need "
                      "--calibration-data; or round-to-nearest (rtn)."),
    click.option("--int4-block-size", type=click.Choice(("32", "64", "128")), default="128", show_default=True,
                 help="INT4: weights per scale along K (128: TensorRT's fastest; smaller: more accurate)."),
    click.option("--int4-asymmetric", is_flag=True,
                 help="INT4: uint4 with zero points (ONNX Runtime only: TensorRT takes symmetric INT4)."),
    click.option("--int4-lm-head/--no-int4-lm-head", default=False, show_default=True,
                 help="INT4: quantize the LM head too (off: kept float, as ModelOpt's INT4 AWQ recipe does)."),
    click.option("--fp8-lm-head/--no-fp8-lm-head", default=False, show_default=True,
                 help="FP8: quantize the LM head too (default: it stays float, as in ModelOpt's FP8 recipe)."),
    click.option("--int4-activations", type=click.Choice(("fp16", "fp32")), default="fp16", show_default=True,
                 help="INT4: precision of activations and everything not an INT4 weight."),
)


def _smoothquant(value: str):
    if value in (None, "off", "none"):
        return None
    if value == "auto":
        return "auto"
    try:
        alpha = float(value)
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise click.BadParameter(f"{value!r} is not a number in [0, 1], 'auto' or 'off'")
    return alpha
build_options = _options(
    click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
                 help="TensorRT builder optimization level."),
    click.option("--workspace", "workspace_mib", type=click.IntRange(min=1), help="Workspace limit in MiB."),
    click.option("--timing-cache", type=click.Path(path_type=Path), help="Timing cache to reuse and update."),
    click.option("--hardware-compat", type=click.Choice(("none", "ampere_plus", "same_compute_capability")),
                 default="none", show_default=True),
    click.option("--runtime", "trt_runtime", type=click.Choice(("full", "lean")), default="full", show_default=True,
                 help="TensorRT runtime the engines are for: lean (pip install 'trtcompile[lean]') runs only "
                      "version-compatible engines, so lean builds them."),
    click.option("--engines", "engine_layout", type=click.Choice(("shared", "per-bucket")), default="shared",
                 show_default=True, help="One engine with a profile per bucket (weights once), or one engine per bucket."),
    click.option("--version-compatible/--no-version-compatible", default=None,
                 help="Engines that run on later TensorRT too [default: with --runtime lean]."),
    click.option("--exclude-lean-runtime", is_flag=True, help="Version-compatible engines without the embedded lean runtime."),
    click.option("--require-engine", is_flag=True, help="Fail when no TensorRT engine can be built here."),
)


def export_settings(opset, legacy_exporter, trust_remote_code=False, kv_cache="static", kv_cache_dtype="auto",
                    all_logits=False, **_):
    from trtcompile.preflight import default_opset
    from trtcompile.settings import ExportSettings

    return ExportSettings(opset=default_opset(legacy_exporter) if opset is None else opset, dynamo=not legacy_exporter,
                          trust_remote_code=trust_remote_code, kv_cache=kv_cache, kv_cache_dtype=kv_cache_dtype,
                          all_logits=all_logits)


def optimize_settings(precision, disabled_passes, keep_io_fp32, **_):
    from trtcompile.settings import OptimizeSettings

    return OptimizeSettings(precision=precision, disabled_passes=tuple(disabled_passes), keep_io_fp32=keep_io_fp32)


def calibration_settings(calibration_data, calibration_method, calibration_samples, smoothquant_alpha,
                         accuracy_target, int8_attention, exclude_nodes, float_precision, int4_method="awq",
                         int4_block_size="128", int4_asymmetric=False, int4_lm_head=False, int4_activations="fp16",
                         weight_rounding="gptq", fp8_lm_head=False, **_):
    from trtcompile.settings import CalibrationSettings

    return CalibrationSettings(data=calibration_data, method=calibration_method, num_samples=calibration_samples,
                               smoothquant_alpha=smoothquant_alpha, accuracy_target=accuracy_target,
                               int8_attention=int8_attention, exclude_nodes=tuple(exclude_nodes),
                               float_precision=float_precision, int4_method=int4_method,
                               int4_block_size=int(int4_block_size), int4_symmetric=not int4_asymmetric,
                               int4_lm_head=int4_lm_head, int4_activations=int4_activations,
                               weight_rounding=weight_rounding, fp8_lm_head=fp8_lm_head)


def build_settings(opt_level, workspace_mib, timing_cache, hardware_compat, version_compatible,
                   exclude_lean_runtime, require_engine, trt_runtime="full", engine_layout="shared", **_):
    from trtcompile.settings import BuildSettings

    return BuildSettings(optimization_level=opt_level, workspace_mib=workspace_mib, timing_cache=timing_cache,
                         hardware_compatibility=hardware_compat, runtime=trt_runtime, engines=engine_layout,
                         version_compatible=version_compatible, exclude_lean_runtime=exclude_lean_runtime,
                         require_engine=require_engine)


def verify_settings(precision, atol, enabled=True):
    from trtcompile.settings import VerifySettings

    verify = VerifySettings(enabled=enabled)
    if atol is not None:
        verify = VerifySettings(atol={**verify.atol, precision: atol}, enabled=enabled)
    return verify


def echo_json(data) -> None:
    import json

    click.echo(json.dumps(data, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="trtcompile")
def cli():
    """Compile PyTorch transformers to TensorRT engines, and run them.

    \b
    trtcompile compile MODEL -o OUT     export, optimize, build, package, verify
    trtcompile inspect OUT              what is in a package
    trtcompile run OUT                  run it (TensorRT, or ONNX Runtime without a GPU)
    """


@cli.command()
@click.argument("model")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Package directory.")
@export_options
@optimize_options
@build_options
@click.option("--no-verify", is_flag=True, help="Skip the accuracy check against the original model.")
@click.option("--atol", type=click.FloatRange(min=0), help="Verification tolerance (max abs, scaled by max(1, |reference|)).")
@command_options
def compile(model, output, no_verify, atol, **options):
    """Compile MODEL (HF checkpoint dir, file.py:factory, or .onnx) into a package at OUTPUT."""
    from trtcompile.compile import compile_package

    manifest = compile_package(
        model, output, profile_path=options["profile"], export=export_settings(**options),
        optimize=optimize_settings(**options), calibration=calibration_settings(**options),
        build=build_settings(**options), verify=verify_settings(options["precision"], atol, not no_verify),
        progress=progress())
    engines = len(manifest.engines)
    click.echo(f"wrote {output} ({engines} engine{'s' * (engines != 1)}, {len(manifest.buckets)} bucket(s), "
               f"{manifest.precision})")


@cli.command()
@click.argument("model")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="ONNX file to write.")
@export_options
@command_options
def export(model, output, **options):
    """Export MODEL to ONNX, with the profile's dynamic axes."""
    from trtcompile.compile import export_stage, save_stage
    from trtcompile.preflight import check_options

    settings = export_settings(**options)
    check_options(export=settings, onnx_out=output)
    show = progress()
    _, onnx_model = export_stage(model, options["profile"], settings, show)
    save_stage(onnx_model, output, show)
    click.echo(f"wrote {output}")


@cli.command()
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="ONNX file to write.")
@optimize_options
@command_options
def optimize(onnx_file, output, **options):
    """Run the rewrite passes (and precision) on an exported ONNX file."""
    from trtcompile.compile import optimize_stage, save_stage
    from trtcompile.onnx_io import load_model
    from trtcompile.preflight import check_options

    settings, calibration = optimize_settings(**options), calibration_settings(**options)
    check_options(optimize=settings, calibration=calibration, onnx_out=output)
    show = progress()
    result = optimize_stage(load_model(onnx_file), settings, calibration, show)
    if verbosity() >= 0:
        for report in result.reports:
            if report.matched or report.declined:
                click.echo(f"  {report.name}: matched {len(report.matched)}, declined {len(report.declined)}")
    save_stage(result.model, output, show)
    click.echo(f"wrote {output}")


@cli.command()
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Package directory.")
@build_options
@click.option("--no-verify", is_flag=True, help="Skip the accuracy check against the original model.")
@click.option("--source", help="The original model, if it moved since export (for verification).")
@click.option("--atol", type=click.FloatRange(min=0), help="Verification tolerance (max abs, scaled by max(1, |reference|)).")
@click.option("--trust-remote-code", is_flag=True, help="Run the Python code the source checkpoint ships.")
@command_options
def build(onnx_file, output, no_verify, source, atol, trust_remote_code, **options):
    """Build TensorRT engines for an optimized ONNX file and package them (verified like compile)."""
    from trtcompile.compile import build_from_stage_file
    from trtcompile.preflight import check_options

    settings = build_settings(**options)
    check_options(build=settings, package_out=output)
    manifest = build_from_stage_file(onnx_file, output, build=settings, source=source,
                                     verify=(atol, not no_verify), trust_remote_code=trust_remote_code,
                                     progress=progress())
    click.echo(f"wrote {output} ({len(manifest.engines)} engine(s))")


@cli.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--source", help="The original model, if it moved since compile (default: the one the manifest names).")
@click.option("--backend", type=click.Choice(("onnxruntime", "tensorrt")), default="onnxruntime", show_default=True)
@click.option("--atol", type=click.FloatRange(min=0), help="Tolerance (max abs, scaled by max(1, |reference|)).")
@click.option("--trust-remote-code", is_flag=True, help="Run the Python code the source checkpoint ships.")
@click.option("--json", "as_json", is_flag=True, help="Print the accuracy report as JSON.")
@command_options
def verify(package, source, backend, atol, trust_remote_code, as_json):
    """Compare a package against its original model on every bucket."""
    from trtcompile.compile import verify_package

    report = verify_package(package, source=source, backend=backend, trust_remote_code=trust_remote_code,
                            atol=atol, progress=progress())
    if as_json:
        echo_json(report)
    else:
        click.echo(f"passed on {len(report['cases'])} shapes")


@cli.command()
@click.argument("target", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@click.option("--passes", "show_passes", is_flag=True, help="List every match and decline of every pass.")
@command_options
def inspect(target, as_json, show_passes):
    """Show a package (manifest, op histogram, buckets, engines, fusion report) or an ONNX file."""
    from trtcompile.inspect import describe

    click.echo(describe(target, as_json=as_json, show_passes=show_passes))


@cli.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--inputs", type=click.Path(path_type=Path), help=".npz with one array per input.")
@click.option("--dim", "dims", multiple=True, metavar="NAME=VALUE",
              help="Generate inputs with these dimension values (default: the first bucket's opt).")
@click.option("--backend", type=click.Choice(("auto", "tensorrt", "onnxruntime")), default="auto", show_default=True)
@click.option("--save", type=click.Path(path_type=Path), help="Write the outputs to this .npz.")
@click.option("--iterations", type=click.IntRange(min=1), default=1, show_default=True, help="Repeat and print latency.")
@click.option("--json", "as_json", is_flag=True, help="Print shapes, statistics and latency as JSON.")
@command_options
def run(package, inputs, dims, backend, save, iterations, as_json):
    """Run a package on inputs from an .npz file, or generated ones."""
    from trtcompile.run_command import run_package

    result = run_package(package, inputs, dims, backend, save, iterations)
    if as_json:
        echo_json(result)
    else:
        click.echo(result["text"])


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name", type=click.Choice(("runtime", "passes", "precision", "generate", "decode", "serve", "compile")))
@click.option("--json", "as_json", is_flag=True, help="Print the benchmark's tables as JSON instead.")
@click.pass_context
@command_options
def bench(ctx, name, as_json):
    """Benchmarks: runtime (MiniLM latency), passes, precision, generate, decode (per-op profile), serve, compile. Extra args go to the benchmark."""
    import importlib

    from trtcompile.bench.common import collected_tables

    with collected_tables(as_json) as tables:
        importlib.import_module(f"trtcompile.bench.{name}").main(ctx.args)
    if as_json:
        echo_json({"benchmark": name, "tables": tables})


def _register_optional_commands():
    try:
        from trtcompile.cli_generate import generate
    except ImportError:
        return
    cli.add_command(generate)
    from trtcompile.cli_serve import serve

    cli.add_command(serve)


_register_optional_commands()


def main():
    exit_on_sigterm()
    cli()


if __name__ == "__main__":
    main()
