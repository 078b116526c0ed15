import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from pass_fixtures import tiny_feeds
from fusion_helpers import Builder, apply, assert_same, const, ops
from trtcompile.passes.fuse_rms_norm import fuse_rms_norm

H = 16


def _rms(b: Builder, x, *, inverse="Reciprocal", eps=1e-6, square="Pow"):
    #  x ─┬─ Pow(2) ── ReduceMean(-1) ── Add(eps) ── Sqrt ── Reciprocal | Div(1, ·) ─┐
    #     └──────────────────────────────────────────────────────────────────────── Mul ── n
    sq = b.op("Pow", x, const("two", 2.0)) if square == "Pow" else b.op("Mul", x, x)
    mean = b.op("ReduceMean", sq, const("axes", np.array([-1], np.int64)), attrs={"keepdims": 1})
    root = b.op("Sqrt", b.op("Add", mean, const("eps", eps)))
    if inverse == "Div":
        return b.op("Div", x, root)
    inv = b.op("Reciprocal", root) if inverse == "Reciprocal" else b.op("Div", const("one", 1.0), root)
    return b.op("Mul", x, inv)


def _feeds(dtype=np.float32):
    return {"x": (np.random.default_rng(0).standard_normal((3, 5, H)) * 3).astype(dtype)}


@pytest.mark.parametrize("inverse,square", [("Reciprocal", "Pow"), ("Div1", "Pow"), ("Div", "Mul")])
def test_fuses_dynamo_and_legacy_spellings(inverse, square):
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=["B", 5, H])
    w = np.random.default_rng(1).standard_normal(H).astype(np.float32)
    y = b.op("Mul", const("w", w), _rms(b, x, inverse=inverse, square=square))
    model = b.model([x], [y])
    fused, report = apply(model, fuse_rms_norm, prepare=False)
    assert ops(fused) == {"RMSNormalization": 1}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in fused.graph.node[0].attribute}
    assert attrs == {"axis": -1, "epsilon": pytest.approx(1e-6), "stash_type": 1}
    assert fused.opset_import[0].version == 23
    assert_same(model, fused, _feeds())


def test_fp16_llama_style_casts_go_away():
    #  x16 ── Cast(f32) ── [rms] ── Cast(f16) ── Mul(w16) ── y16     (HF LlamaRMSNorm in half precision)
    b, x = Builder(), gs.Variable("x", dtype=np.float16, shape=["B", 5, H])
    up = b.op("Cast", x, attrs={"to": onnx.TensorProto.FLOAT}, dtype=np.float32)
    down = b.op("Cast", _rms(b, up), attrs={"to": onnx.TensorProto.FLOAT16}, dtype=np.float16)
    w = np.random.default_rng(1).standard_normal(H).astype(np.float16)
    y = b.op("Mul", const("w", w), down, dtype=np.float16)
    model = b.model([x], [y])
    fused, _ = apply(model, fuse_rms_norm, prepare=False)
    assert ops(fused) == {"RMSNormalization": 1} and fused.graph.node[0].input[0] == "x"
    assert_same(model, fused, _feeds(np.float16), atol=1e-2)


def test_no_weight_gets_ones():
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=["B", 5, H])
    model = b.model([x], [_rms(b, x)])
    fused, _ = apply(model, fuse_rms_norm, prepare=False)
    assert ops(fused) == {"RMSNormalization": 1}
    assert_same(model, fused, _feeds())


def test_declines_non_scalar_epsilon_and_leaves_graph():
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=["B", 5, H])
    model = b.model([x], [_rms(b, x, eps=np.full(H, 1e-6, np.float32))])
    fused, report = apply(model, fuse_rms_norm, prepare=False)
    assert ops(fused) == ops(model) and fused.opset_import[0].version == 18
    assert "epsilon" in report.declined[0]["reason"]
    assert_same(model, fused, _feeds())


@pytest.mark.parametrize("family,exporter,opset", [
    ("llama", "dynamo", 18), ("qwen2", "legacy", 17), ("mistral", "legacy", 20),
])
def test_real_exports(tiny_export, family, exporter, opset):
    # 2 layers x (input + post-attention norm) + the final norm = 5.
    model = tiny_export(family, exporter, opset)
    fused, report = apply(model, fuse_rms_norm)
    assert ops(fused).get("RMSNormalization") == 5 and not report.declined
    assert not {"ReduceMean", "Sqrt", "Reciprocal", "Pow"} & set(ops(fused))
    assert fused.opset_import[0].version == 23
    assert_same(model, fused, tiny_feeds(family))


def test_warns_when_fewer_norms_than_layers_need():
    from trtcompile.passes import ModelInfo, PassContext
    from trtcompile.passes.fuse_rms_norm import fuse_rms_norm as run

    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=["B", 5, H])
    model = b.model([x], [_rms(b, x, eps=np.full(H, 1e-6, np.float32))])   # declined: not fused
    ctx = PassContext(model=ModelInfo(num_layers=2))
    run(gs.import_onnx(model), ctx)
    assert ctx.warnings and "0 LayerNormalization/RMSNormalization ops for 2 layers" in ctx.warnings[0]
