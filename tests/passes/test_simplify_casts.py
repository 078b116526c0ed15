import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pass_fixtures import tiny_feeds
from fusion_helpers import Builder, apply, assert_same, ops
from trtcompile.passes.simplify_casts import simplify_casts


def _feeds():
    return {"x": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32) * 100}


def test_removes_only_same_type_casts():
    #  x:f32 ── Cast(f32) ── Cast(f16) ── Cast(f32) ── Relu ── y
    #            (no-op: gone)  (narrowing and widening: meaning, kept)
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=[2, 3])
    same = b.op("Cast", x, attrs={"to": onnx.TensorProto.FLOAT}, dtype=np.float32)
    half = b.op("Cast", same, attrs={"to": onnx.TensorProto.FLOAT16}, dtype=np.float16)
    back = b.op("Cast", half, attrs={"to": onnx.TensorProto.FLOAT}, dtype=np.float32)
    model = b.model([x], [b.op("Relu", back)])
    fused, report = apply(model, simplify_casts, prepare=False)
    assert ops(fused) == {"Cast": 2, "Relu": 1} and len(report.matched) == 1
    assert fused.graph.node[0].input[0] == "x"
    assert_same(model, fused, _feeds())


def test_keeps_a_no_op_cast_that_writes_a_graph_output():
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=[2, 3])
    model = b.model([x], [b.op("Cast", x, attrs={"to": onnx.TensorProto.FLOAT}, dtype=np.float32)])
    fused, report = apply(model, simplify_casts, prepare=False)
    assert ops(fused) == {"Cast": 1} and "graph output" in report.declined[0]["reason"]


def test_legacy_llama_export(tiny_export):
    # fp32 -> fp32 upcasts in every RMSNorm and int64 -> int64 casts in index arithmetic.
    model = tiny_export("llama", "legacy", 17)
    fused, report = apply(model, simplify_casts)
    assert len(report.matched) >= 10
    assert_same(model, fused, tiny_feeds("llama"))
