import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from pass_fixtures import tiny_feeds
from fusion_helpers import Builder, apply, assert_same, const, ops
from trtcompile.passes.fuse_layer_norm import fuse_layer_norm

H = 16


def _decomposed(b: Builder, x, *, axes=(-1,), opset=18, eps=1e-5):
    #  x ─┬─ ReduceMean ─┐
    #     └──────────── Sub ── d ─┬─ Pow(2) ── ReduceMean ── Add(eps) ── Sqrt ─┐
    #                             └──────────────────────────────────────── Div ── Mul(w) ── Add(b) ── y
    def mean(t):
        if opset < 18:
            return b.op("ReduceMean", t, attrs={"axes": list(axes), "keepdims": 1})
        return b.op("ReduceMean", t, const(f"axes{b.count}", np.array(axes, np.int64)), attrs={"keepdims": 1})

    d = b.op("Sub", x, mean(x))
    var = mean(b.op("Pow", d, const("two", 2.0)))
    norm = b.op("Div", d, b.op("Sqrt", b.op("Add", var, const("eps", eps))))
    return norm


def _weights(dtype=np.float32):
    rng = np.random.default_rng(1)
    return rng.standard_normal(H).astype(dtype), rng.standard_normal(H).astype(dtype)


def _feeds(dtype=np.float32):
    return {"x": (np.random.default_rng(0).standard_normal((3, 5, H)) * 4 + 2).astype(dtype)}


@pytest.mark.parametrize("opset", [14, 18])
def test_fuses_decomposition_and_raises_opset(opset):
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=["B", 5, H])
    w, bias = _weights()
    y = b.op("Add", b.op("Mul", _decomposed(b, x, opset=opset, eps=1e-12), const("w", w)), const("b", bias))
    model = b.model([x], [y], opset=opset)
    fused, report = apply(model, fuse_layer_norm, prepare=False)
    assert ops(fused) == {"LayerNormalization": 1}
    node = fused.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["stash_type"] == 1 and attrs["axis"] == -1 and attrs["epsilon"] == pytest.approx(1e-12)
    assert fused.opset_import[0].version == max(opset, 17)
    assert len(report.matched) == 1
    assert_same(model, fused, _feeds())


def test_fp16_with_casts_keeps_fp32_accumulation():
    #  x16 ── Cast(f32) ── [decomposition] ── Cast(f16) ── Mul(w16) ── Add(b16) ── y16
    b, x = Builder(), gs.Variable("x", dtype=np.float16, shape=["B", 5, H])
    w, bias = _weights(np.float16)
    up = b.op("Cast", x, attrs={"to": onnx.TensorProto.FLOAT}, dtype=np.float32)
    down = b.op("Cast", _decomposed(b, up), attrs={"to": onnx.TensorProto.FLOAT16}, dtype=np.float16)
    y = b.op("Add", b.op("Mul", down, const("w", w)), const("b", bias), dtype=np.float16)
    model = b.model([x], [y])
    fused, report = apply(model, fuse_layer_norm, prepare=False)
    assert ops(fused) == {"LayerNormalization": 1}          # both Casts gone, input is x16 itself
    assert fused.graph.node[0].input[0] == "x"
    assert_same(model, fused, _feeds(np.float16), atol=1e-2)


def test_declines_mean_over_another_axis():
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=["B", 5, H])
    y = _decomposed(b, x, axes=(1,))
    model = b.model([x], [y])
    fused, report = apply(model, fuse_layer_norm, prepare=False)
    assert ops(fused) == ops(model)
    assert "not only the last axis" in report.declined[0]["reason"]
    assert_same(model, fused, _feeds())


def test_declines_when_variance_is_reused():
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=["B", 5, H])
    norm = _decomposed(b, x)
    var = next(n for n in b.nodes if n.op == "Add").outputs[0]   # var + eps, also read below
    var.dtype = np.float32
    model = b.model([x], [norm, var])
    fused, report = apply(model, fuse_layer_norm, prepare=False)
    assert "LayerNormalization" not in ops(fused)
    assert "used outside" in report.declined[0]["reason"]


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_legacy_export_at_opset_14(tiny_export, family):
    # Below opset 17 the legacy exporter spells every LayerNorm out (5 per tiny model).
    model = tiny_export(family, "legacy", 14)
    assert ops(model).get("ReduceMean") == 10
    fused, report = apply(model, fuse_layer_norm)
    assert ops(fused).get("LayerNormalization") == 5 and "ReduceMean" not in ops(fused)
    assert not report.declined
    assert_same(model, fused, tiny_feeds(family))
