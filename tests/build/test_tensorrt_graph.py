"""What TensorRT's parser gets for a static-cache package: its graph without the ORT-only Ifs.

The parse itself needs TensorRT (not here); the rewritten graph is checked with ONNX Runtime
against the package's own graph on decode steps that take either branch of the Ifs.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from decoder_packages import compiled_decoder

from trtcompile.build.tensorrt_graph import graph_for_tensorrt, import_check


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compiled_decoder("llama", tmp_path_factory.mktemp("decoders"))


def _decode_feeds(session, kv_len: int, position: int) -> dict:
    rng = np.random.default_rng(0)
    feeds = {}
    for spec in session.get_inputs():
        dtype = {"tensor(float)": np.float32, "tensor(float16)": np.float16}.get(spec.type, np.int64)
        if spec.name.startswith("past_key_values."):
            shape = [1, *spec.shape[1:]]
            feeds[spec.name] = (rng.standard_normal(shape) * 0.5).astype(dtype)
        elif spec.name == "input_ids":
            feeds[spec.name] = np.array([[7]], np.int64)
        elif spec.name == "position_ids":
            feeds[spec.name] = np.array([[position]], np.int64)
        elif spec.name == "cache_position":
            feeds[spec.name] = np.array([position], np.int64)
        elif spec.name == "attention_mask":
            feeds[spec.name] = np.ones((1, kv_len), dtype)
        else:
            raise AssertionError(f"unexpected input {spec.name}")
    return feeds


def test_static_cache_package_is_parsed_without_its_ifs_and_computes_the_same(package):
    import onnxruntime as ort

    model_path = package / "model.onnx"
    before = hashlib.sha256(model_path.read_bytes()).hexdigest()
    original = onnx.load(str(model_path), load_external_data=False)
    layers = sum(n.op_type == "If" for n in original.graph.node)
    assert layers >= 2  # one whole-cache If per layer

    with graph_for_tensorrt(model_path) as path:
        assert path != model_path and path.parent == model_path.parent and path.is_file()
        variant = onnx.load(str(path), load_external_data=False)
        kinds = [n.op_type for n in variant.graph.node]
        assert "If" not in kinds and kinds.count("Attention") == layers
        assert not any(n.name.startswith("kv_read_whole_cache") for n in variant.graph.node)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"])
                    for p in (model_path, path)]
    assert not path.exists()  # removed once parsed
    assert hashlib.sha256(model_path.read_bytes()).hexdigest() == before  # the package is untouched

    max_cache = next(i.shape[2] for i in sessions[0].get_inputs() if i.name.startswith("past_key_values."))
    assert isinstance(max_cache, int)
    for kv_len in (32, max_cache):  # a prefix (else branch) and the whole cache (then branch, in place)
        feeds = _decode_feeds(sessions[0], kv_len, position=10)
        expected, actual = (s.run(None, feeds) for s in sessions)
        for name, a, b in zip((o.name for o in sessions[0].get_outputs()), expected, actual):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-5, err_msg=f"{name} at kv_len {kv_len}")


def test_a_graph_without_cache_ifs_is_parsed_as_it_is(tiny_bert_package):
    model_path = tiny_bert_package / "model.onnx"
    with graph_for_tensorrt(model_path) as path:
        assert path == model_path
    assert sorted(p.name for p in model_path.parent.iterdir() if p.name.startswith(".model")) == []


def test_compile_records_that_the_graphs_tensorrt_would_get_keep_its_documented_rules(package, tiny_bert_package):
    import json

    from trtcompile.inspect import describe

    for pkg in (package, tiny_bert_package):  # a static-cache decoder (its Ifs inlined first) and an encoder
        assert import_check(pkg / "model.onnx") == []
        manifest = json.loads((pkg / "manifest.json").read_text())
        assert manifest["build"]["tensorrt_import_check"] == []  # no TensorRT here: compile ran the check
        assert "TensorRT import check: passed" in describe(pkg)


def test_an_fp16_graph_gets_an_fp16_cache_that_tensorrt_can_update_in_place(tmp_path):
    """--precision fp16 with the default --kv-cache-dtype auto: the cache inputs and outputs are FP16
    themselves, not FP32 behind Casts (which TensorRT's KV-cache update cannot take), and it generates."""
    import json

    from tiny_models import save_checkpoint

    from trtcompile import runtime
    from trtcompile.compile import compile_package
    from trtcompile.settings import OptimizeSettings

    checkpoint = save_checkpoint("llama", tmp_path / "llama")
    out = tmp_path / "fp16"
    compile_package(str(checkpoint), out, optimize=OptimizeSettings(precision="fp16"))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["generation"]["kv_cache_dtype"] == "float16"
    past = [t for t in manifest["inputs"] if t["name"].startswith("past_key_values.")]
    assert past and all(t["dtype"] == "float16" for t in past)
    assert manifest["build"]["tensorrt_import_check"] == []
    with runtime.load(out, backend="onnxruntime", threads=1) as model:
        tokens = model.generate(np.array([[1, 5, 9, 2]], np.int64), max_new_tokens=6)
    assert tokens.shape == (1, 10)


def test_inspect_runs_the_check_on_an_onnx_file_and_on_a_package_compiled_before_it(package, tmp_path):
    import json
    import shutil

    from trtcompile.inspect import describe

    assert "TensorRT import check: passed" in describe(package / "model.onnx")
    older = tmp_path / "older"
    shutil.copytree(package, older)
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["build"]["tensorrt_import_check"]
    (older / "manifest.json").write_text(json.dumps(manifest))
    assert "  TensorRT import check: passed" in describe(older)
