"""Every CLI failure a user can cause: one message, no traceback, exit 2 (usage), 1 (user error) or
130 (Ctrl-C); options checked before any work; -v/-q everywhere, --json where results are data.

The model argument of the option checks below does not exist: the message being about the option,
not the model, shows the check ran before anything was loaded or exported.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from trtcompile.cli import cli

ROOT = Path(__file__).parent.parent
DATA = ROOT / "tests" / "data"


def invoke(*args, input=None):
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


@pytest.mark.parametrize("options, code, message", [
    (["--precision", "fp64"], 2, "'fp64' is not one of"),
    (["--precision", "int8"], 1, "--precision int8 needs calibration data"),
    (["--precision", "int8", "--calibration-data", "nope.npz"], 1, "--calibration-data 'nope.npz' does not exist"),
    (["--calibration-data", str(ROOT / "samples" / "calibration.txt")], 1,
     "--calibration-data applies only to --precision int8/fp8/int4, but the precision is fp32"),
    (["--accuracy-target", "0.99"], 1, "--accuracy-target applies only to --precision int8/fp8/int4"),
    (["--precision", "int8", "--fp8-lm-head"], 1, "--fp8-lm-head applies only to --precision fp8, but the precision is int8"),
    (["--opset", "30"], 1, "--opset 30 is outside what the dynamo exporter writes here (18..24)"),
    (["--opset", "23", "--legacy-exporter"], 1, "--opset 23 is outside what the legacy exporter writes (7..20)"),
    (["--disable-pass", "fuse_atention"], 1, "--disable-pass 'fuse_atention' is not a pass (did you mean "
                                             "'fuse_attention'?)"),
    (["--calibration-samples", "0"], 2, "0 is not in the range x>=1"),
    (["--workspace", "0"], 2, "0 is not in the range x>=1"),
    (["--exclude-lean-runtime"], 1, "--exclude-lean-runtime only applies to version-compatible engines"),
])
def test_compile_options_are_checked_before_any_work(tmp_path, options, code, message):
    result = invoke("compile", tmp_path / "no-such-model", "-o", tmp_path / "out", *options)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "does not exist" not in result.output.replace("'nope.npz' does not exist", "")
    assert not (tmp_path / "out").exists()


def test_require_engine_without_tensorrt_is_refused_first(tmp_path):
    from trtcompile.build import engine_unavailable_reason

    if engine_unavailable_reason() is None:
        pytest.skip("TensorRT and a GPU are present: an engine can be built here")
    result = invoke("compile", tmp_path / "no-such-model", "-o", tmp_path / "out", "--require-engine")
    assert result.exit_code == 1 and "no TensorRT engine can be built here" in result.output


def test_legacy_exporter_alone_gets_its_own_default_opset(tmp_path):
    result = invoke("export", tmp_path / "no-such-model", "-o", tmp_path / "raw.onnx", "--legacy-exporter")
    assert result.exit_code == 1
    assert "opset" not in result.output and "does not exist" in result.output  # got as far as the model


@pytest.mark.parametrize("out, message", [
    ("missing-dir/raw.onnx", "directory '{tmp}/missing-dir' does not exist"),
    ("", "is a directory; these commands write one .onnx file"),
    ("raw.txt", "does not end in .onnx"),
])
def test_export_output_is_checked_before_export(tmp_path, out, message):
    result = invoke("export", tmp_path / "no-such-model", "-o", tmp_path / out)
    assert result.exit_code == 1 and message.format(tmp=tmp_path) in result.output


@pytest.fixture()
def npz(tmp_path):
    def make(**arrays):
        path = tmp_path / "feeds.npz"
        np.savez(path, **arrays)
        return path
    return make


def good_feeds(**override):
    feeds = {"input_ids": np.ones((1, 8), np.int64), "attention_mask": np.ones((1, 8), np.int64),
             "token_type_ids": np.zeros((1, 8), np.int64)}
    return {**feeds, **override}


def test_run_errors(tiny_bert_package, tmp_path, npz):
    pkg = tiny_bert_package
    cases = [
        (["--iterations", "0"], 2, "0 is not in the range x>=1"),
        (["--inputs", tmp_path / "none.npz"], 1, "does not exist"),
        (["--inputs", ROOT / "README.md"], 1, "is not a readable .npz"),
        (["--dim", "batch=1", "--inputs", npz(**good_feeds())], 1, "--inputs and --dim both say what to feed"),
        (["--inputs", npz(**good_feeds(input_ids=np.full((1, 8), 500, np.int64)))], 1,
         "input 'input_ids' holds 500 at index [0, 0], outside its range 0..127"),
        (["--save", tmp_path / "missing" / "out.npz"], 1, "--save"),
        (["--dim", "batch=x"], 1, "--dim 'batch=x' is not NAME=VALUE"),
        ([], 0, "bucket short"),
    ]
    np.save(tmp_path / "one.npy", np.ones(3))
    cases.append((["--inputs", tmp_path / "one.npy"], 1, "is one .npy array, but a package takes named inputs"))
    for options, code, message in cases:
        result = invoke("run", pkg, *options)
        assert result.exit_code == code and message in result.output, (options, result.output)
    assert not (tmp_path / "missing").exists()


def test_run_json(tiny_bert_package, tmp_path):
    result = invoke("run", tiny_bert_package, "--json", "--iterations", "3", "--save", tmp_path / "out.npz")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["bucket"] == "short" and data["outputs"]["last_hidden_state"]["shape"] == [1, 8, 32]
    assert data["latency_ms"]["runs"] == 3 and "text" not in result.output.split("{", 1)[0]
    assert np.load(tmp_path / "out.npz")["last_hidden_state"].shape == (1, 8, 32)


def test_inspect_invalid_manifest(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "manifest.json").write_text('{"schema_version": 1, "model": []}')
    result = invoke("inspect", tmp_path / "pkg")
    assert result.exit_code == 1 and "'model' is a list" in result.output


def test_disk_full_is_one_message_and_leaves_nothing(tiny_bert_package, tmp_path, monkeypatch):
    import onnx

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[1]) if len(args) > 1 else None)

    monkeypatch.setattr(onnx, "save_model", full)
    result = invoke("build", tiny_bert_package / "model.onnx", "-o", tmp_path / "out", "--no-verify")
    assert result.exit_code == 1, result.output
    assert "error: No space left on device" in result.output and "free some space" in result.output
    assert list(tmp_path.iterdir()) == []  # no partial package


def test_ctrl_c_exits_130(tiny_bert_package, monkeypatch):
    import trtcompile.run_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trtcompile.run_command, "run_package", interrupted)
    result = invoke("run", tiny_bert_package)
    assert result.exit_code == 130 and "interrupted" in result.output


def test_every_command_takes_verbose_and_quiet_and_results_come_as_json():
    for name, command in cli.commands.items():
        flags = {opt for p in command.params for opt in p.opts}
        assert {"-v", "--verbose", "-q", "--quiet"} <= flags, name
        if name in ("run", "verify", "generate", "bench"):
            assert "--json" in flags, name


def test_runtime_only_install_names_the_extra(tmp_path, tiny_bert_package):
    """With only the runtime installed (no torch, onnx, ...), compiler commands say which extra to
    install, and `run` works."""
    blocked = ["torch", "onnx", "onnx_graphsurgeon", "onnxscript", "polygraphy", "transformers", "yaml", "rich"]
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {set(blocked)!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from trtcompile.cli import main
sys.argv = ["trtcompile"] + sys.argv[1:]
main()
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def trtcompile(*args):
        return subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=120)

    proc = trtcompile("compile", "some-model", "-o", tmp_path / "out")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "install the 'compiler' extra: pip install \".[compiler]\"" in proc.stderr
    proc = trtcompile("run", tiny_bert_package, "--backend", "onnxruntime", "-q")
    assert proc.returncode == 0 and "bucket short" in proc.stdout, proc.stderr


def test_remote_code_never_runs_on_a_yes(tmp_path):
    """A checkpoint whose config maps to its own .py: a "y" on stdin must not run it."""
    ck = tmp_path / "ck"
    ck.mkdir()
    marker = tmp_path / "remote-code-ran"
    (ck / "config.json").write_text(json.dumps({
        "model_type": "evil", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", "AutoModel": "modeling_evil.EvilModel"}}))
    code = f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig\n" \
           f"class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n"
    (ck / "configuration_evil.py").write_text(code)
    (ck / "modeling_evil.py").write_text(code)
    (ck / "model.safetensors").write_bytes(b"")
    result = invoke("compile", ck, "-o", tmp_path / "out", input="y\ny\n")
    assert result.exit_code == 1, result.output
    assert "ships its own code" in result.output and "--trust-remote-code" in result.output
    assert not marker.exists()


def test_package_tokenizer_code_never_runs_on_a_yes(tmp_path_factory, tmp_path):
    """`generate --prompt` with a package tokenizer that maps to its own .py: refused, not run."""
    import shutil

    from decoder_packages import compiled_decoder

    pkg = tmp_path / "pkg"
    shutil.copytree(compiled_decoder("gpt2", tmp_path_factory.mktemp("decoders")), pkg)
    marker = tmp_path / "tokenizer-code-ran"
    tok = pkg / "tokenizer"
    tok.mkdir(exist_ok=True)
    (tok / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "EvilTokenizer", "auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}}))
    (tok / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    result = invoke("generate", pkg, "--prompt", "hello", "--backend", "onnxruntime", input="y\ny\n")
    assert result.exit_code == 1, result.output
    assert "--trust-remote-code" in result.output or "--ids" in result.output
    assert not marker.exists()


def test_generate_json(tmp_path_factory):
    from decoder_packages import compiled_decoder

    pkg = compiled_decoder("gpt2", tmp_path_factory.mktemp("decoders"))
    result = invoke("generate", pkg, "--ids", "5,6,7", "--max-new-tokens", "4", "--stop-ids", "", "--json",
                    "--backend", "onnxruntime")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["prompt_tokens"] == 3 and len(data["tokens"]) == data["new_tokens"] == 4


def test_bench_json_collects_the_tables():
    from trtcompile.bench.common import collected_tables, print_table

    with collected_tables() as tables:
        print_table("t", ["a", "b"], [[1, 2.5]], note="n")
    assert tables == [{"title": "t", "columns": ["a", "b"], "rows": [[1, 2.5]], "note": "n"}]


def test_bench_compile_names_a_bad_checkpoint_or_gguf(tmp_path):
    # Checked before anything is converted or compiled: one line naming the option and the path.
    for option in ("--checkpoint", "--gguf"):
        proc = subprocess.run([sys.executable, "-m", "trtcompile.cli", "bench", "compile", option,
                               str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and f"{option} {tmp_path / 'missing'}" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
