"""Stages keep their records: export -> optimize -> build gives the package `compile` gives (passes,
warnings, timings, accuracy); `compile` of a stage file uses the profile stored in it and verifies
against the original model; `verify` finds a package's source from any directory, or takes --source."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from trtcompile.cli import cli
from trtcompile.runtime.manifest import read_manifest

DATA = Path(__file__).parent / "data"


def invoke(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(scope="module")
def staged(checkpoint, tmp_path_factory):
    """raw.onnx, opt.onnx and the package built from them, stage by stage, through the CLI."""
    root = tmp_path_factory.mktemp("stages")
    ck = checkpoint("bert")
    for args in (["export", ck, "-o", root / "raw.onnx", "--profile", DATA / "tiny-encoder.yaml"],
                 ["optimize", root / "raw.onnx", "-o", root / "opt.onnx"],
                 ["build", root / "opt.onnx", "-o", root / "pkg"]):
        result = invoke(*args, "-q")
        assert result.exit_code == 0, result.output
        assert result.output.startswith("wrote") and result.output.count("\n") == 1, result.output  # -q: quiet
    return root


def test_staged_package_keeps_the_pass_report_timings_and_accuracy(staged, tiny_bert_package):
    staged_manifest = read_manifest(staged / "pkg").data
    compiled = read_manifest(tiny_bert_package).data
    summary = [(p["name"], p["matched"]) for p in staged_manifest["passes"]]
    assert summary == [(p["name"], p["matched"]) for p in compiled["passes"]]
    assert summary and dict(summary)["fuse_attention"] == 2  # the two layers' Attention
    assert {"load", "export", "optimize", "verify"} <= set(staged_manifest["build"]["timings_s"])
    assert staged_manifest["accuracy"]["passed"] and len(staged_manifest["accuracy"]["cases"]) == 4


def test_compile_of_a_stage_file_uses_its_profile_and_original_model(staged, checkpoint, tmp_path):
    result = invoke("compile", staged / "raw.onnx", "-o", tmp_path / "pkg", "-q")
    assert result.exit_code == 0, result.output
    data = read_manifest(tmp_path / "pkg").data
    assert [b["name"] for b in data["buckets"]] == ["short", "long"]  # tiny-encoder.yaml, not a default
    assert data["model"]["source"] == str(checkpoint("bert").resolve()) and data["model"]["source_kind"] == "hf"
    assert data["accuracy"]["passed"]


def test_stage_file_whose_model_moved(staged, tmp_path):
    raw = json.loads(read_stage_json(staged / "raw.onnx"))
    moved = tmp_path / "raw.onnx"
    import onnx

    model = onnx.load(str(staged / "raw.onnx"))
    for prop in model.metadata_props:
        if prop.key == "trtcompile":
            raw["source"]["spec"] = str(tmp_path / "gone")
            prop.value = json.dumps(raw)
    onnx.save(model, str(moved))
    result = invoke("build", moved, "-o", tmp_path / "pkg")
    assert result.exit_code == 1 and "is not there" in result.output and "--source" in result.output
    assert not (tmp_path / "pkg").exists()


def read_stage_json(path: Path) -> str:
    import onnx

    return next(p.value for p in onnx.load(str(path), load_external_data=False).metadata_props
                if p.key == "trtcompile")


def test_verify_from_another_directory_and_with_source(checkpoint, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(checkpoint("bert"), work / "ck")
    monkeypatch.chdir(work)
    result = invoke("compile", "ck", "-o", "pkg", "--profile", DATA / "tiny-encoder.yaml", "-q")
    assert result.exit_code == 0, result.output
    monkeypatch.chdir(tmp_path)
    result = invoke("verify", "work/pkg", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passed"]  # progress goes to stderr
    (work / "ck").rename(work / "moved")
    result = invoke("verify", "work/pkg")
    assert result.exit_code == 1 and "is not there" in result.output and "--source" in result.output
    result = invoke("verify", "work/pkg", "--source", "work/moved", "--atol", "0")
    assert result.exit_code == 1 and "verification failed" in result.output
    assert "--atol" in result.output and "--no-verify" not in result.output and "--precision" not in result.output
    assert invoke("verify", "work/pkg", "--source", "work/moved").exit_code == 0
    assert os.getcwd() == str(tmp_path)


def test_inspect_shows_a_stage_files_record(staged):
    result = invoke("inspect", staged / "opt.onnx")
    assert result.exit_code == 0, result.output
    assert "stage optimize (precision fp32)" in result.output and "tiny-encoder.yaml" in result.output
    assert "fuse_attention 2" in result.output and "export" in result.output.split("timings", 1)[1]
