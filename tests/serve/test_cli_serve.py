"""`trtcompile serve` refuses bad invocations with one line and exit code 1, before any server starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from trtcompile.cli import cli


@pytest.mark.parametrize("args, words", [
    (["/nonexistent/pkg"], ["'/nonexistent/pkg' does not exist", "trtcompile compile"]),
    (["--model", "llama"], ["--model 'llama' is not NAME=OUT", "--model llama=out/llama"]),
    (["--model", "a=/x", "--model", "a=/y"], ["'a' is given twice"]),
    ([], ["no package to serve"]),
    (["/x", "--max-batch", "0"], ["--max-batch", "0"]),
])
def test_bad_invocations(args, words):
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code in (1, 2) and "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output


def test_a_package_that_is_neither_an_lm_nor_a_text_encoder_is_refused(serve_packages, tmp_path):
    """The server decides from the manifest: an encoder whose input is pixel_values (a ViT) is refused."""
    import json
    import shutil

    package = tmp_path / "vision-like"
    shutil.copytree(serve_packages["bert"], package)
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["inputs"] = [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    (package / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(cli, ["serve", str(package)])
    assert result.exit_code == 1 and "cannot be served" in result.output and "pixel_values" in result.output
    assert "Traceback" not in result.output


def test_threads_and_spin_reach_the_onnxruntime_sessions(serve_packages):
    from trtcompile.serve import ServeSettings, load_models

    settings = ServeSettings(backend="auto", threads=1, spin_us=0, huge_pages=False)  # no TensorRT: auto runs ORT
    served, _ = load_models({"llama": serve_packages["llama"]}, settings)
    session = served["llama"].model.backend.session
    try:
        assert session.get_session_options().intra_op_num_threads == 1
        assert session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
        assert served["llama"].model.backend.huge_pages.enabled is False
    finally:
        served["llama"].model.close()
    result = CliRunner().invoke(cli, ["serve", "/x", "--spin-us", "-1"])
    assert result.exit_code == 2 and "--spin-us" in result.output and "Traceback" not in result.output
