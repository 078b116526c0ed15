import numpy as np
import onnx_graphsurgeon as gs

from fusion_helpers import Builder, apply, assert_same, const, ops
from trtcompile.passes.split_heads_once import split_heads_once


def _qkv(b: Builder, x, shape, q_heads=4, kv_heads=2, d=8, perm=(0, 2, 1, 3), widths=None):
    #  x ── MatMul([Wq | Wk | Wv]) ── Split(-1) ── Reshape(shape) ── Transpose(perm) ── q, k, v
    rng = np.random.default_rng(0)
    widths = np.array(widths or [q_heads * d, kv_heads * d, kv_heads * d], np.int64)
    joined = b.op("MatMul", x, const("w", rng.standard_normal((16, int(widths.sum()))).astype(np.float32)))
    parts = b.op("Split", joined, gs.Constant("widths", widths), attrs={"axis": -1}, outputs=3)
    return [b.op("Transpose", b.op("Reshape", p, shape), attrs={"perm": list(perm)}) for p in parts]


def _dynamic_shape(b: Builder, x, d=8):
    #  the exporters' [batch, sequence, -1, d]: Concat(Shape(x)[0:2], [-1], [d])
    dims = b.op("Slice", b.op("Shape", x), gs.Constant("s0", np.array([0], np.int64)),
                gs.Constant("s2", np.array([2], np.int64)))
    return b.op("Concat", dims, gs.Constant("minus1", np.array([-1], np.int64)),
                gs.Constant("d", np.array([d], np.int64)), attrs={"axis": 0})


def test_q_k_v_heads_come_from_one_reshape_transpose_and_a_split_on_heads():
    b = Builder()
    x = gs.Variable("x", dtype=np.float32, shape=["B", "S", 16])
    q, k, v = _qkv(b, x, _dynamic_shape(b, x))
    model = b.model([x], [q, k, v])
    fused, report = apply(model, split_heads_once, prepare=False)
    assert ops(model)["Reshape"] == 3 and ops(model)["Transpose"] == 3
    assert {op: n for op, n in ops(fused).items() if op in ("Reshape", "Transpose", "Split")} == \
        {"Reshape": 1, "Transpose": 1, "Split": 1}
    (split,) = [n for n in fused.graph.node if n.op_type == "Split"]
    assert split.attribute[0].i == 1 and report.matched[0]["heads"] == [4, 2, 2]
    rng = np.random.default_rng(1)
    for batch, seq in ((1, 1), (2, 5)):  # a decode step and a prefill
        assert_same(model, fused, {"x": rng.standard_normal((batch, seq, 16)).astype(np.float32)}, atol=0)


def test_other_splits_and_other_layouts_are_left_alone():
    b = Builder()
    x = gs.Variable("x", dtype=np.float32, shape=["B", "S", 16])
    shape = _dynamic_shape(b, x)
    q, k, v = _qkv(b, x, shape, perm=(0, 2, 3, 1))  # K-transposed layout: not the head-major move
    gate, up = b.op("Split", x, gs.Constant("gu", np.array([8, 8], np.int64)), attrs={"axis": -1}, outputs=2)
    y = b.op("Mul", b.op("Sigmoid", gate), up)  # an MLP's gate/up Split
    model = b.model([x], [q, k, v, y])
    fused, report = apply(model, split_heads_once, prepare=False)
    assert ops(fused) == ops(model) and not report.matched


def test_widths_that_are_not_whole_heads_are_declined():
    b = Builder()
    x = gs.Variable("x", dtype=np.float32, shape=["B", "S", 16])
    q, k, v = _qkv(b, x, _dynamic_shape(b, x, d=4), widths=[36, 12, 16])  # 36/8 heads would not be whole
    model = b.model([x], [q, k, v])
    graph = gs.import_onnx(model)
    (concat,) = [n for n in graph.nodes if n.op == "Concat"]
    concat.inputs[2] = gs.Constant("d8", np.array([8], np.int64))
    from trtcompile.onnx_io import to_model

    fused, report = apply(to_model(graph), split_heads_once, prepare=False)
    assert not report.matched and "dividing widths [36, 12, 16]" in report.declined[0]["reason"]
