"""Lazy models (trtcompile/lazy_weights.py): weights stay in external data files through the optimize stage and saving.

A compile holds the exported model as references to a weights directory; passes read a weight only
when they need its values and write what they create back out. These tests run the same optimize
on the tiny Llama held in memory and held lazily, and check that the two give the same model
(ONNX Runtime outputs), that the lazy one never carried its weights in the protobuf, and that
saving copies the weights file to file (external or inline, as the size decides).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_close, ort_run
from tiny_onnx import export, token_feeds

from trtcompile import lazy_weights
from trtcompile.export import write_metadata
from trtcompile.lazy_weights import load_lazy, weights_dir
from trtcompile.onnx_io import save_model
from trtcompile.optimize import optimize
from trtcompile.settings import CalibrationSettings, OptimizeSettings


def _with_metadata(model: onnx.ModelProto) -> onnx.ModelProto:
    write_metadata(model, {"source": {"config": {}}})  # what optimize reads of the stage record
    return model


def _lazy(model: onnx.ModelProto, directory: Path) -> onnx.ModelProto:
    """The model saved with every weight external, and loaded back without them."""
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(directory / "exported.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="exported.onnx.data", size_threshold=256)
    return load_lazy(directory / "exported.onnx")


def _inline_bytes(model: onnx.ModelProto) -> int:
    return sum(len(t.raw_data) for t in model.graph.initializer)


def _external_bytes(model: onnx.ModelProto) -> int:
    return sum(int({e.key: e.value for e in t.external_data}["length"]) for t in model.graph.initializer
               if t.data_location == onnx.TensorProto.EXTERNAL)


@pytest.fixture(scope="module")
def feeds():
    return token_feeds(1, batch=2, sequence=12, seed=3)[0]


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int4"])
def test_optimize_on_a_lazy_model_equals_optimize_in_memory(tmp_path, monkeypatch, feeds, precision):
    monkeypatch.setattr(lazy_weights, "SPILL_MIN_BYTES", 0)  # tiny weights: spill everything a pass makes
    settings = OptimizeSettings(precision=precision)
    calibration = CalibrationSettings(int4_method="rtn")
    in_memory = optimize(_with_metadata(export("llama")), settings, calibration).model
    lazy_in = _lazy(_with_metadata(export("llama")), tmp_path / "work")
    assert weights_dir(lazy_in) == (tmp_path / "work").resolve()
    weights = _external_bytes(lazy_in)
    assert weights > 0 and _inline_bytes(lazy_in) < weights / 20, "the lazy model carries its weights inline"

    lazy_out = optimize(lazy_in, settings, calibration).model
    assert weights_dir(lazy_out) == (tmp_path / "work").resolve()
    # The rule spill_constants keeps: every tensor from _INLINE_BELOW bytes up is on disk; shape
    # constants and scales below it stay inline (a ratio of the two failed as passes added shapes).
    inline = {t.name: len(t.raw_data) for t in lazy_out.graph.initializer
              if len(t.raw_data) >= lazy_weights._INLINE_BELOW}
    assert not inline, f"a pass's new weights were not spilled: {inline}"
    if precision != "fp32":  # the cast or quantized weights went to disk
        assert (tmp_path / "work" / "spilled.data").stat().st_size > 0
    assert [n.op_type for n in lazy_out.graph.node] == [n.op_type for n in in_memory.graph.node]

    (tmp_path / "pkg").mkdir()
    saved = save_model(lazy_out, tmp_path / "pkg" / "model.onnx", external_above=0)
    assert (tmp_path / "pkg" / "model.onnx.data").is_file()
    expected = ort_run(in_memory, feeds)
    actual = ort_run(str(saved), feeds)
    for name in expected:
        assert_close(actual[name], expected[name], atol=1e-5, what=f"{precision} {name}")


def test_saving_a_small_lazy_model_puts_its_weights_inline(tmp_path):
    feeds = token_feeds(1, batch=1, sequence=12, seed=3)[0]  # the exported rotary takes batch 1
    model = _with_metadata(export("llama"))
    expected = ort_run(model, feeds)
    lazy = _lazy(model, tmp_path / "work")
    out = tmp_path / "pkg" / "model.onnx"
    out.parent.mkdir()
    save_model(lazy, out, external_above=1 << 30)
    assert not (tmp_path / "pkg" / "model.onnx.data").exists()
    loaded = onnx.load(str(out))
    assert weights_dir(loaded) is None  # the work directory is not named in a saved model
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in loaded.graph.initializer)
    actual = ort_run(loaded, feeds)
    for name in expected:
        assert np.array_equal(actual[name], expected[name]), name


def test_int8_calibration_runs_on_a_lazy_model(tmp_path):
    """Calibration and the accuracy gate run ONNX Runtime on the lazy model (weights read from disk)."""
    from trtcompile.passes import ModelInfo, PassContext
    from trtcompile.quantize import quantize_int8

    cal, ev = token_feeds(4, 1, 16, seed=10), token_feeds(2, 1, 16, seed=20)

    def quantize(model):
        ctx = PassContext(model=ModelInfo(is_decoder=True))
        return quantize_int8(model, cal, CalibrationSettings(), ctx, evaluation=ev), ctx

    expected, ctx_memory = quantize(export("llama"))
    actual, ctx_lazy = quantize(_lazy(export("llama"), tmp_path / "work"))
    assert ctx_lazy.report.matched and len(ctx_lazy.report.matched) == len(ctx_memory.report.matched)
    assert weights_dir(actual) == (tmp_path / "work").resolve()
    (tmp_path / "pkg").mkdir()
    saved = save_model(actual, tmp_path / "pkg" / "model.onnx", external_above=0)
    want, got = ort_run(expected, ev[0]), ort_run(str(saved), ev[0])
    for name in want:
        assert_close(got[name], want[name], atol=1e-5, what=f"int8 {name}")
