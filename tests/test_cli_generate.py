"""`trtcompile generate`: streams tokens (text with the package's tokenizer, else ids), then timings."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from decoder_packages import compiled_decoder
from trtcompile import runtime
from trtcompile.cli_generate import generate


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compiled_decoder("gpt2", tmp_path_factory.mktemp("decoders"))


def test_generate_with_ids(package):
    result = CliRunner().invoke(generate, [str(package), "--ids", "5,6,7", "--max-new-tokens", "6",
                                           "--stop-ids", "", "--backend", "onnxruntime"])
    assert result.exit_code == 0, result.output
    with runtime.load(package, backend="onnxruntime") as model:
        expected = model.generate(np.array([[5, 6, 7]]), max_new_tokens=6, stop_tokens=[])[0, 3:]
    lines = result.output.splitlines()
    assert lines[0].split() == [str(t) for t in expected]
    assert "prompt 3 tokens, 6 new: TTFT" in lines[1] and "tokens/s" in lines[1]


def test_generate_with_the_package_tokenizer(package, tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    pkg = tmp_path / "with-tokenizer"
    shutil.copytree(package, pkg)
    vocab = {f"w{i}": i for i in range(128)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    (pkg / "tokenizer").mkdir()
    tok.save(str(pkg / "tokenizer" / "tokenizer.json"))

    result = CliRunner().invoke(generate, [str(pkg), "--prompt", "w5 w6 w7", "--max-new-tokens", "5",
                                           "--temperature", "0.8", "--seed", "1", "--stop-ids", ""])
    assert result.exit_code == 0, result.output
    words = result.output.splitlines()[0].split()
    assert len(words) == 5 and all(w.startswith("w") for w in words)
    again = CliRunner().invoke(generate, [str(pkg), "--prompt", "w5 w6 w7", "--max-new-tokens", "5",
                                          "--temperature", "0.8", "--seed", "1", "--stop-ids", ""])
    assert again.output.splitlines()[0] == result.output.splitlines()[0]


def test_errors_are_one_line(package):
    result = CliRunner().invoke(generate, [str(package), "--prompt", "hello", "--backend", "onnxruntime"])
    assert result.exit_code == 1 and "no usable tokenizer" in result.output and "--ids" in result.output
    result = CliRunner().invoke(generate, [str(package), "--ids", "5,6", "--max-new-tokens", "1000"])
    assert result.exit_code == 1 and "max_new_tokens 1000" in result.output
    assert "Traceback" not in result.output


def test_registered_on_the_main_cli():
    from trtcompile.cli import cli

    result = CliRunner().invoke(cli, ["generate", "--help"])
    assert result.exit_code == 0 and "--max-new-tokens" in result.output and "--ids" in result.output
