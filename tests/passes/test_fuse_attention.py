"""fuse_attention on tiny inline graphs: each pattern variant, and the cases it must leave alone.

Every test checks structure (one Attention with the right attributes, the MatMul/Softmax gone) and
runs ONNX Runtime before and after (fp32, max abs <= 1e-4); `apply` runs the graph check.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from fusion_helpers import Builder, apply, assert_same, const, ops
from trtcompile.passes import ModelInfo, PassContext
from trtcompile.passes.fuse_attention import fuse_attention

B, N, S, H = 2, 4, 5, 8
RNG = np.random.default_rng(0)


def _var(name, shape, dtype=np.float32):
    return gs.Variable(name, dtype=dtype, shape=shape)


def _rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _i64(name, values):
    return gs.Constant(name, np.asarray(values, np.int64))


def _attention(model: onnx.ModelProto) -> onnx.NodeProto:
    nodes = [n for n in model.graph.node if n.op_type == "Attention"]
    assert len(nodes) == 1, [n.op_type for n in model.graph.node]
    return nodes[0]


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _fuse(model, *, info: ModelInfo | None = None):
    fused, report = apply(model, fuse_attention, prepare=False) if info is None else _apply_with(model, info)
    return fused, report


def _apply_with(model, info):
    from trtcompile.graph.check import check_graph
    from trtcompile.onnx_io import to_model

    ctx = PassContext(model=info)
    graph = fuse_attention(gs.import_onnx(model), ctx)
    graph.cleanup().toposort()
    check_graph(graph, after="fuse_attention")
    return to_model(graph), ctx


def _assert_fused(fused, report, *, heads=(N, N), scale=None, causal=0, mask_inputs=1):
    counts = ops(fused)
    assert counts.get("Attention") == 1 and "Softmax" not in counts and "MatMul" not in counts, counts
    node = _attention(fused)
    attrs = _attrs(node)
    assert (attrs.get("q_num_heads"), attrs.get("kv_num_heads")) == heads
    if scale is not None:
        assert attrs["scale"] == pytest.approx(scale, rel=1e-6)
    assert attrs["is_causal"] == causal
    assert len([i for i in node.input if i]) == 3 + mask_inputs
    assert fused.opset_import[0].version >= 23
    assert len(report.matched) == 1 and not report.declined, report.declined
    return node


def test_eager_mha_with_transposed_key_and_additive_mask():
    #  q [B,N,S,H] ─────────────────────────┐
    #  k [B,S,N,H] ── Transpose(0,2,3,1) ───┴ MatMul ── Div(√H) ── Add(mask [B,1,1,S]) ── Softmax ─┐
    #  v [B,N,S,H] ─────────────────────────────────────────────────────────────────────────────┴ MatMul ── y
    b = Builder()
    q, k, v, m = _var("q", ["b", N, "s", H]), _var("k", ["b", "s", N, H]), _var("v", ["b", N, "s", H]), \
        _var("m", ["b", 1, 1, "s"])
    kt = b.op("Transpose", k, attrs={"perm": [0, 2, 3, 1]})
    scores = b.op("Add", b.op("Div", b.op("MatMul", q, kt), const("sqrt_h", np.sqrt(H))), m)
    y = b.op("MatMul", b.op("Softmax", scores, attrs={"axis": -1}), v)
    model = b.model([q, k, v, m], [y])
    fused, report = _fuse(model)
    _assert_fused(fused, report, scale=1 / np.sqrt(H))
    mask = np.zeros((B, 1, 1, S), np.float32)
    mask[1, ..., 3:] = -10000.0
    assert_same(model, fused, {"q": _rand(B, N, S, H), "k": _rand(B, S, N, H), "v": _rand(B, N, S, H), "m": mask})


def test_scale_split_over_q_and_k_as_torch_sdpa_decomposes_it():
    #  q ── Mul(c) ─────────────────────────────────┐
    #  k ── Reshape[-1,S,H] ── Transpose(0,2,1) ── Reshape[B,N,H,S] ── Mul(c) ── MatMul ── Softmax ── MatMul(v) ── y
    b = Builder()
    q, k, v = _var("q", ["b", N, "s", H]), _var("k", ["b", N, "s", H]), _var("v", ["b", N, "s", H])
    shape = b.op("Shape", k)
    s_h = b.op("Slice", shape, _i64("m2", [-2]), _i64("end", [2**62]))
    flat = b.op("Reshape", k, b.op("Concat", _i64("neg1", [-1]), s_h, attrs={"axis": 0}))
    t = b.op("Transpose", flat, attrs={"perm": [0, 2, 1]})
    back = b.op("Concat", b.op("Slice", shape, _i64("z", [0]), _i64("m2b", [-2])),
                b.op("Slice", shape, _i64("m1", [-1]), _i64("end2", [2**62])),
                b.op("Slice", shape, _i64("m2c", [-2]), _i64("m1b", [-1])), attrs={"axis": 0})
    kt = b.op("Mul", b.op("Reshape", t, back), const("ck", H ** -0.25))
    scores = b.op("MatMul", b.op("Mul", q, const("cq", H ** -0.25)), kt)
    y = b.op("MatMul", b.op("Softmax", scores, attrs={"axis": -1}), v)
    model = b.model([q, k, v], [y])
    fused, report = _fuse(model)
    _assert_fused(fused, report, scale=1 / np.sqrt(H), mask_inputs=0)
    assert "Transpose" not in ops(fused) and "Reshape" not in ops(fused)
    assert_same(model, fused, {n: _rand(B, N, S, H) for n in "qkv"})


@pytest.mark.parametrize("inverted", [False, True])
def test_bool_mask_through_where(inverted):
    #  scores ── Where(keep, scores, -inf) ── Softmax ...     (inverted: Where(pad, -1e9, scores))
    b = Builder()
    q, k, v, keep = (_var("q", [B, N, S, H]), _var("k", [B, N, S, H]), _var("v", [B, N, S, H]),
                     _var("keep", [B, 1, S, S], np.bool_))
    scores = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]})), const("c", 0.3))
    if inverted:
        masked = b.op("Where", keep, const("fill", -1e9), scores)
    else:
        masked = b.op("Where", keep, scores, const("fill", -np.inf))
    y = b.op("MatMul", b.op("Softmax", masked, attrs={"axis": 3}), v)
    model = b.model([q, k, v, keep], [y])
    fused, report = _fuse(model)
    node = _assert_fused(fused, report, scale=0.3)
    assert ("Not" in ops(fused)) == inverted
    mask = np.ones((B, 1, S, S), bool)
    mask[0, 0, :, 3:] = False
    feeds = {"q": _rand(B, N, S, H), "k": _rand(B, N, S, H), "v": _rand(B, N, S, H),
             "keep": ~mask if inverted else mask}
    assert node.input[3] in ("keep",) or inverted
    assert_same(model, fused, feeds)


def _causal_trilu(b, like):
    # torch's SDPA(is_causal=True) decomposition: Where(Trilu(ones[S,S]) == 0, -inf, 0).
    shape = b.op("Shape", like)
    s = b.op("Slice", shape, _i64("m2", [-2]), _i64("m1", [-1]))
    ones = b.op("Expand", const("one", 1.0), b.op("Concat", s, s, attrs={"axis": 0}))
    lower = b.op("Trilu", ones, attrs={"upper": 0})
    return b.op("Where", b.op("Equal", lower, const("zero", 0.0)), const("ninf", -np.inf), const("zero2", 0.0))


def test_exactly_causal_mask_becomes_is_causal():
    #  q,k ── MatMul ── Mul(c) ── Add(Where(Trilu(ones) == 0, -inf, 0)) ── Softmax ── MatMul(v)
    b = Builder()
    q, k, v = _var("q", ["b", N, "s", H]), _var("k", ["b", N, "s", H]), _var("v", ["b", N, "s", H])
    scores = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]})), const("c", 0.25))
    y = b.op("MatMul", b.op("Softmax", b.op("Add", scores, _causal_trilu(b, q)), attrs={"axis": -1}), v)
    model = b.model([q, k, v], [y])
    fused, report = _fuse(model)
    _assert_fused(fused, report, scale=0.25, causal=1, mask_inputs=0)
    assert "Trilu" not in ops(fused)
    assert_same(model, fused, {n: _rand(B, N, 6, H) for n in "qkv"})


def test_constant_causal_mask_becomes_is_causal():
    #  static S: scores + C[S,S] (0 on and below the diagonal, -1e4 above) ── Softmax ...
    b = Builder()
    q, k, v = _var("q", [B, N, S, H]), _var("k", [B, N, S, H]), _var("v", [B, N, S, H])
    tri = np.triu(np.full((S, S), -1e4, np.float32), 1)
    scores = b.op("Add", b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]})), const("tri", tri))
    y = b.op("MatMul", b.op("Softmax", scores, attrs={"axis": -1}), v)
    model = b.model([q, k, v], [y])
    fused, report = _fuse(model)
    _assert_fused(fused, report, scale=1.0, causal=1, mask_inputs=0)
    assert_same(model, fused, {n: _rand(B, N, S, H) for n in "qkv"})


def test_causal_and_padding_stay_one_mask_without_is_causal():
    #  tril(ones) AND keep[B,1,1,S] ── Where(·, 0, -max) ── Add(scores, ·)   (HF's combined mask)
    b = Builder()
    q, k, v = _var("q", ["b", N, "s", H]), _var("k", ["b", N, "s", H]), _var("v", ["b", N, "s", H])
    keep = _var("keep", ["b", 1, 1, "s"], np.bool_)
    shape = b.op("Shape", q)
    s = b.op("Slice", shape, _i64("m2", [-2]), _i64("m1", [-1]))
    lower = b.op("Cast", b.op("Trilu", b.op("Expand", const("one", 1.0), b.op("Concat", s, s, attrs={"axis": 0})),
                              attrs={"upper": 0}), attrs={"to": onnx.TensorProto.BOOL}, dtype=np.bool_)
    mask = b.op("Where", b.op("And", lower, keep, dtype=np.bool_), const("z", 0.0),
                const("low", np.finfo(np.float32).min))
    scores = b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]}))
    y = b.op("MatMul", b.op("Softmax", b.op("Add", b.op("Mul", scores, const("c", 0.5)), mask)), v)
    model = b.model([q, k, v, keep], [y])
    fused, report = _fuse(model)
    _assert_fused(fused, report, scale=0.5, causal=0, mask_inputs=1)
    pad = np.ones((B, 1, 1, 6), bool)
    pad[1, ..., 4:] = False  # right padding: every query row keeps at least key 0
    assert_same(model, fused, {"q": _rand(B, N, 6, H), "k": _rand(B, N, 6, H), "v": _rand(B, N, 6, H), "keep": pad})


@pytest.mark.parametrize("kv_heads,raw", [(2, False), (1, False), (2, True)])
def test_hf_repeat_kv_becomes_native_gqa(kv_heads, raw):
    #  k [B,Nkv,S,H] ── Unsqueeze(2) ── Expand[B,Nkv,n,S,H] ── Reshape[B,N,S,H] ── Transpose ── MatMul ...
    #  v [B,Nkv,S,H] ── (same expansion) ─────────────────────────────────────────────────── MatMul ── y
    #  raw: as the dynamo exporter writes `x[:, :, None, :, :].expand(...)` before any rewrite:
    #  k ── Slice(axis 2, 0:MAX) ── Unsqueeze(2) ── Slice(axis 3, 0:MAX) ── Expand ── Identity ── Reshape
    b = Builder()
    q = _var("q", ["b", N, "s", H])
    k, v = _var("k", ["b", kv_heads, "s", H]), _var("v", ["b", kv_heads, "s", H])
    n_rep = N // kv_heads
    to_end = np.iinfo(np.int64).max

    def full_slice(x, axis, tag):
        return b.op("Slice", x, _i64(f"{tag}s", [0]), _i64(f"{tag}e", [to_end]), _i64(f"{tag}a", [axis]),
                    _i64(f"{tag}st", [1]))

    def repeat_kv(x, tag):
        shape = b.op("Shape", x)
        bb, ss = b.op("Slice", shape, _i64(f"{tag}0", [0]), _i64(f"{tag}1", [1])), \
            b.op("Slice", shape, _i64(f"{tag}2", [2]), _i64(f"{tag}3", [3]))
        target5 = b.op("Concat", bb, _i64(f"{tag}kv", [kv_heads]), _i64(f"{tag}rep", [n_rep]), ss, _i64(f"{tag}h", [H]),
                       attrs={"axis": 0})
        unsq = b.op("Unsqueeze", full_slice(x, 2, f"{tag}x") if raw else x, _i64(f"{tag}ax", [2]))
        expanded = b.op("Expand", full_slice(unsq, 3, f"{tag}u") if raw else unsq, target5)
        if raw:
            expanded = b.op("Identity", expanded)
        target4 = b.op("Concat", bb, _i64(f"{tag}n", [N]), ss, _i64(f"{tag}h2", [H]), attrs={"axis": 0})
        return b.op("Reshape", expanded, target4)

    scores = b.op("MatMul", q, b.op("Transpose", repeat_kv(k, "k"), attrs={"perm": [0, 1, 3, 2]}))
    y = b.op("MatMul", b.op("Softmax", b.op("Mul", scores, const("c", H ** -0.5))), repeat_kv(v, "v"))
    model = b.model([q, k, v], [y])
    fused, report = _fuse(model)
    node = _assert_fused(fused, report, heads=(N, kv_heads), mask_inputs=0)
    assert list(node.input[1:3]) == ["k", "v"] and "Expand" not in ops(fused) and "Slice" not in ops(fused)
    assert report.matched[0]["gqa_unexpanded"]
    assert_same(model, fused, {"q": _rand(B, N, S, H), "k": _rand(B, kv_heads, S, H), "v": _rand(B, kv_heads, S, H)})


def test_repeat_kv_with_a_real_slice_inside_stays_expanded():
    #  k [B,2,S+1,H] ── Unsqueeze(2) ── Slice(axis 3, 1:MAX) ── Expand ── Reshape: the Slice drops a
    #  key between the steps, so Unsqueeze's input is not K; Attention gets the expanded K (not GQA).
    b = Builder()
    q, k, v = _var("q", [B, N, S, H]), _var("k", [B, 2, S + 1, H]), _var("v", [B, 2, S, H])

    def repeat_kv(x, cut):
        five = b.op("Unsqueeze", x, _i64(f"{x.name}ax", [2]))
        if cut:
            five = b.op("Slice", five, _i64("s", [1]), _i64("e", [np.iinfo(np.int64).max]), _i64("a", [3]))
        expanded = b.op("Expand", five, _i64(f"{x.name}t5", [B, 2, 2, S, H]))
        return b.op("Reshape", expanded, _i64(f"{x.name}t4", [B, N, S, H]))

    scores = b.op("MatMul", q, b.op("Transpose", repeat_kv(k, True), attrs={"perm": [0, 1, 3, 2]}))
    y = b.op("MatMul", b.op("Softmax", scores, attrs={"axis": -1}), repeat_kv(v, False))
    model = b.model([q, k, v], [y])
    fused, report = _fuse(model)
    node = _attention(fused)
    assert not report.matched[0]["gqa_unexpanded"] and "Slice" in ops(fused) and node.input[1] != "k"
    assert_same(model, fused, {"q": _rand(B, N, S, H), "k": _rand(B, 2, S + 1, H), "v": _rand(B, 2, S, H)})


def test_mqa_by_matmul_broadcast():
    #  k, v [B,1,S,H]: MatMul broadcasts the single KV head over the N query heads.
    b = Builder()
    q, k, v = _var("q", [B, N, S, H]), _var("k", [B, 1, S, H]), _var("v", [B, 1, S, H])
    scores = b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]}))
    y = b.op("MatMul", b.op("Softmax", scores, attrs={"axis": -1}), v)
    model = b.model([q, k, v], [y])
    fused, report = _fuse(model)
    _assert_fused(fused, report, heads=(N, 1), scale=1.0, mask_inputs=0)
    assert_same(model, fused, {"q": _rand(B, N, S, H), "k": _rand(B, 1, S, H), "v": _rand(B, 1, S, H)})


def test_cross_attention_with_other_length_and_key_padding():
    #  q [B,N,S,H] from the decoder, k/v [B,N,T,H] from the encoder (T != S), mask [B,1,1,T].
    b = Builder()
    q, k, v = _var("q", ["b", N, "s", H]), _var("k", ["b", N, "t", H]), _var("v", ["b", N, "t", H])
    m = _var("m", ["b", 1, 1, "t"])
    scores = b.op("Add", b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]})),
                               const("c", 0.2)), m)
    y = b.op("MatMul", b.op("Softmax", scores, attrs={"axis": -1}), v)
    model = b.model([q, k, v, m], [y])
    fused, report = _fuse(model)
    _assert_fused(fused, report, scale=0.2)
    mask = np.zeros((B, 1, 1, 9), np.float32)
    mask[0, ..., 6:] = -1e9
    assert_same(model, fused, {"q": _rand(B, N, 3, H), "k": _rand(B, N, 9, H), "v": _rand(B, N, 9, H), "m": mask})


def test_rank3_batched_heads():
    #  q [B*N,S,H], k [B*N,H,S] (already transposed), v [B*N,S,H]: old-style bmm attention.
    b = Builder()
    q, kt, v = _var("q", ["bn", S, H]), _var("kt", ["bn", H, S]), _var("v", ["bn", S, H])
    y = b.op("MatMul", b.op("Softmax", b.op("Div", b.op("MatMul", q, kt), const("d", 3.0)), attrs={"axis": 2}), v)
    model = b.model([q, kt, v], [y])
    fused, report = _fuse(model)
    node = _attention(fused)
    assert _attrs(node)["scale"] == pytest.approx(1 / 3)
    assert "Softmax" not in ops(fused) and "MatMul" not in ops(fused) and ops(fused)["Squeeze"] == 1
    assert report.matched[0]["rank"] == 3
    assert_same(model, fused, {"q": _rand(B * N, S, H), "kt": _rand(B * N, H, S), "v": _rand(B * N, S, H)})


@pytest.mark.parametrize("opset", [14, 11])
def test_onnxruntime_transformers_style_bert_graph(opset):
    #  x [B,S,D] ── MatMul(Wq)+bq ── Reshape[0,0,N,H] ── Transpose(0,2,1,3) ────────────┐
    #  x ── MatMul(Wk)+bk ── Reshape ── Transpose(0,2,3,1) ──────────────────── MatMul ── Div(√H) ── Add ── Softmax ─┐
    #  mask [B,S] int ── Unsqueeze(1,2) ── Cast ── Sub(1, ·) ── Mul(-10000) ───────────────────┘                     │
    #  x ── MatMul(Wv)+bv ── Reshape ── Transpose(0,2,1,3) ──────────────────────────────────────────────────── MatMul ──
    #  ── Transpose(0,2,1,3) ── Reshape[0,0,D] ── y                    (no value_info: shapes are inferred)
    D = N * H
    x = gs.Variable("x", dtype=np.float32, shape=["b", "s", D])
    mask = gs.Variable("mask", dtype=np.int64, shape=["b", "s"])
    b = Builder()

    def project(tag, perm):
        w, bias = const(f"W{tag}", _rand(D, D) * 0.3), const(f"b{tag}", _rand(D) * 0.1)
        heads = b.op("Reshape", b.op("Add", b.op("MatMul", x, w), bias), _i64(f"shape{tag}", [0, 0, N, H]))
        return b.op("Transpose", heads, attrs={"perm": perm})

    q, kt, v = project("q", [0, 2, 1, 3]), project("k", [0, 2, 3, 1]), project("v", [0, 2, 1, 3])
    # Opset 11 (older converters): Unsqueeze axes as an attribute, and ONNX's version converter
    # turns its Softmax(axis=3) into Flatten -> Softmax -> Reshape on the way to 23.
    unsq = b.op("Unsqueeze", mask, attrs={"axes": [1, 2]}) if opset < 13 else b.op("Unsqueeze", mask, _i64("axes", [1, 2]))
    ext = b.op("Cast", unsq, attrs={"to": onnx.TensorProto.FLOAT})
    additive = b.op("Mul", b.op("Sub", const("one", 1.0), ext), const("neg", -10000.0))
    probs = b.op("Softmax", b.op("Add", b.op("Div", b.op("MatMul", q, kt), const("sqrt_h", np.sqrt(H))), additive),
                 attrs={"axis": 3})
    ctx = b.op("Transpose", b.op("MatMul", probs, v), attrs={"perm": [0, 2, 1, 3]})
    y = b.op("Reshape", ctx, _i64("out_shape", [0, 0, D]))
    graph = gs.Graph(nodes=b.nodes, inputs=[x, mask], outputs=[y], opset=opset)
    y.dtype, y.shape = np.float32, ["b", "s", D]
    from trtcompile.onnx_io import to_model

    model = to_model(graph)  # no shape inference: the pass must manage without value_info
    fused, report = _fuse(model)
    node = _attention(fused)
    assert _attrs(node)["scale"] == pytest.approx(1 / np.sqrt(H))
    assert "Softmax" not in ops(fused) and fused.opset_import[0].version == 23
    m = np.ones((B, 7), np.int64)
    m[1, 5:] = 0
    assert_same(model, fused, {"x": _rand(B, 7, D), "mask": m})


def test_native_attention_with_expanded_kv_becomes_gqa():
    #  opset 23, as the dynamo exporter writes HF SDPA: Attention(q, repeat_kv(k), repeat_kv(v))
    b = Builder()
    q, k, v = _var("q", ["b", N, "s", H]), _var("k", ["b", 2, "s", H]), _var("v", ["b", 2, "s", H])

    def repeat_kv(x, tag):
        expanded = b.op("Expand", b.op("Unsqueeze", x, _i64(f"{tag}ax", [2])), _i64(f"{tag}t5", [1, 2, 2, 1, 1]))
        return b.op("Reshape", expanded, _i64(f"{tag}t4", [0, N, -1, H]))

    y = b.op("Attention", q, repeat_kv(k, "k"), repeat_kv(v, "v"), attrs={"scale": 0.3})
    model = b.model([q, k, v], [y], opset=23)
    fused, report = _fuse(model)
    node = _attention(fused)
    assert list(node.input[1:3]) == ["k", "v"] and "Expand" not in ops(fused)
    assert (_attrs(node)["q_num_heads"], _attrs(node)["kv_num_heads"]) == (N, 2)
    assert report.matched[0]["native"] and report.matched[0]["gqa_unexpanded"]
    assert_same(model, fused, {"q": _rand(B, N, S, H), "k": _rand(B, 2, S, H), "v": _rand(B, 2, S, H)})


def _plain_block(b, q, k, v, *, probs_hook=None):
    scores = b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]}))
    probs = b.op("Softmax", scores, attrs={"axis": -1})
    return b.op("MatMul", probs, v), probs


def _qkv():
    return _var("q", [B, N, S, H]), _var("k", [B, N, S, H]), _var("v", [B, N, S, H])


def _assert_declined(model, fused, report, reason_part):
    assert ops(fused) == ops(model), "a declined block must stay as it was"
    assert not report.matched and len(report.declined) == 1
    assert reason_part in report.declined[0]["reason"], report.declined[0]["reason"]
    assert_same(model, fused, {n: _rand(B, N, S, H) for n in "qkv"})


def test_declines_when_probabilities_are_an_output():
    #  output_attentions: Softmax's output is a graph output, so the block cannot disappear.
    b = Builder()
    q, k, v = _qkv()
    y, probs = _plain_block(b, q, k, v)
    probs.dtype = np.float32
    model = b.model([q, k, v], [y, probs])
    fused, report = _fuse(model)
    _assert_declined(model, fused, report, "graph output")


def test_declines_when_scores_are_read_elsewhere():
    #  the raw scores also feed a ReduceMax (e.g. a user's logging): an intermediate used outside.
    b = Builder()
    q, k, v = _qkv()
    scores = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]})), const("c", 0.3))
    y = b.op("MatMul", b.op("Softmax", scores, attrs={"axis": -1}), v)
    peak = b.op("ReduceMax", scores, attrs={"keepdims": 0})
    model = b.model([q, k, v], [y, peak])
    fused, report = _fuse(model)
    _assert_declined(model, fused, report, "also read by ReduceMax")


def test_scale_after_mask_is_applied_to_the_mask():
    #  (Q·K^T + bias) * c: Attention adds its mask after scaling, so the mask becomes bias * c.
    b = Builder()
    q, k, v = _qkv()
    scores = b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]}))
    bias = const("bias", _rand(1, 1, S, S))
    y = b.op("MatMul", b.op("Softmax", b.op("Mul", b.op("Add", scores, bias), const("c", 0.3))), v)
    model = b.model([q, k, v], [y])
    fused, report = _fuse(model)
    _assert_fused(fused, report, scale=0.3)
    assert ops(fused).get("Mul") == 1
    assert_same(model, fused, {n: _rand(B, N, S, H) for n in "qkv"})


def test_declines_negative_scale_after_mask():
    #  (Q·K^T + mask) * -1 would turn the mask's -inf into +inf: left alone.
    b = Builder()
    q, k, v = _qkv()
    scores = b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]}))
    bias = const("bias", _rand(1, 1, S, S))
    y = b.op("MatMul", b.op("Softmax", b.op("Mul", b.op("Add", scores, bias), const("c", -0.3))), v)
    model = b.model([q, k, v], [y])
    fused, report = _fuse(model)
    _assert_declined(model, fused, report, "non-positive scale")


def test_declines_softmax_over_query_axis():
    b = Builder()
    q, k, v = _qkv()
    scores = b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]}))
    y = b.op("MatMul", b.op("Softmax", scores, attrs={"axis": 2}), v)
    model = b.model([q, k, v], [y])
    fused, report = _fuse(model)
    _assert_declined(model, fused, report, "axis 2")


def test_declines_softcap_like_op_between_matmul_and_softmax():
    #  Gemma-2 style softcap: Tanh on the scores (TensorRT's parser rejects softcap != 0).
    b = Builder()
    q, k, v = _qkv()
    scores = b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]}))
    capped = b.op("Mul", b.op("Tanh", b.op("Div", scores, const("cap", 50.0))), const("cap2", 50.0))
    y = b.op("MatMul", b.op("Softmax", capped, attrs={"axis": -1}), v)
    model = b.model([q, k, v], [y])
    fused, report = _fuse(model)
    _assert_declined(model, fused, report, "Tanh")


def test_coverage_shortfall_warns():
    #  the config says 2 layers, the graph has one fusable block and one declined one.
    b = Builder()
    q, k, v = _qkv()
    y1, _ = _plain_block(b, q, k, v)
    scores = b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]}))
    y2 = b.op("MatMul", b.op("Softmax", scores, attrs={"axis": 1}), v)
    model = b.model([q, k, v], [y1, y2])
    fused, ctx = _fuse(model, info=ModelInfo(num_layers=2))
    assert ops(fused)["Attention"] == 1 and ops(fused)["Softmax"] == 1
    assert len(ctx.warnings) == 1 and "1 of 2 attention layers" in ctx.warnings[0]
    assert_same(model, fused, {n: _rand(B, N, S, H) for n in "qkv"})


def test_full_coverage_does_not_warn():
    b = Builder()
    q, k, v = _qkv()
    y, _ = _plain_block(b, q, k, v)
    model = b.model([q, k, v], [y])
    fused, ctx = _fuse(model, info=ModelInfo(num_layers=1))
    assert ops(fused) == {"Attention": 1} and not ctx.warnings


@pytest.mark.parametrize("past", [False, True])
def test_native_attention_extra_outputs_and_past_inputs(past):
    #  Attention(q, k, v[, -, past_k, past_v]) -> y, present_k (unused), present_v (unused)
    #  Without past the unused outputs go (TensorRT's parser takes one output). Past inputs are
    #  beyond TensorRT's parser: the node stays as it is (ORT needs the outputs) and the user is warned.
    b = Builder()
    q, k, v = _var("q", [B, N, S, H]), _var("k", [B, N, S, H]), _var("v", [B, N, S, H])
    pk, pv = _var("pk", [B, N, 3, H]), _var("pv", [B, N, 3, H])
    extra = [gs.Variable.empty(), pk, pv] if past else []
    y, _, _ = b.op("Attention", q, k, v, *extra, outputs=3)
    model = b.model([q, k, v] + ([pk, pv] if past else []), [y], opset=23)
    fused, ctx = _fuse(model, info=ModelInfo(num_layers=1))
    node = _attention(fused)
    assert len(node.output) == (3 if past else 1)
    assert len(ctx.warnings) == int(past) and (not past or "past_key/past_value" in ctx.warnings[0])
    feeds = {"q": _rand(B, N, S, H), "k": _rand(B, N, S, H), "v": _rand(B, N, S, H)}
    if past:
        feeds.update(pk=_rand(B, N, 3, H), pv=_rand(B, N, 3, H))
    assert_same(model, fused, feeds)


def test_fp16_block_with_fp32_softmax_and_dropout():
    #  fp16 q,k,v: MatMul ── Mul(c) ── Add(mask fp32 after Cast) ...; HF's eager upcast:
    #  scores ── Cast(fp32) ── Add(mask) ── Softmax ── Cast(fp16) ── Dropout (inference) ── MatMul(v)
    b = Builder()
    f16 = np.float16
    q, k, v = _var("q", [B, N, S, H], f16), _var("k", [B, N, S, H], f16), _var("v", [B, N, S, H], f16)
    m = _var("m", [B, 1, S, S])
    scores = b.op("Mul", b.op("MatMul", q, b.op("Transpose", k, attrs={"perm": [0, 1, 3, 2]})),
                  gs.Constant("c", np.array(H ** -0.5, f16)))
    up = b.op("Cast", scores, attrs={"to": onnx.TensorProto.FLOAT})
    probs = b.op("Softmax", b.op("Add", up, m), attrs={"axis": -1})
    down = b.op("Cast", probs, attrs={"to": onnx.TensorProto.FLOAT16})
    y = b.op("MatMul", b.op("Dropout", down), v, dtype=f16)
    model = b.model([q, k, v, m], [y])
    fused, report = _fuse(model)
    node = _assert_fused(fused, report, scale=float(f16(H ** -0.5)))  # the graph's own fp16 constant
    assert "Cast" in ops(fused) and node.input[3] != "m"  # the fp32 mask is cast to Q's fp16
    mask = np.zeros((B, 1, S, S), np.float32)
    mask[0, ..., 3:] = -10000.0
    feeds = {"q": _rand(B, N, S, H).astype(f16), "k": _rand(B, N, S, H).astype(f16),
             "v": _rand(B, N, S, H).astype(f16), "m": mask}
    assert_same(model, fused, feeds, atol=2e-3)  # fp16 outputs: rounding, not the fusion


def test_declines_rank_broadcasting_key():
    #  q [B,N,S,H] @ k^T [H,S] (one key matrix shared by every batch and head): not Attention's layout.
    b = Builder()
    q, kt, v = _var("q", [B, N, S, H]), _var("kt", [H, S]), _var("v", [B, N, S, H])
    y = b.op("MatMul", b.op("Softmax", b.op("MatMul", q, kt), attrs={"axis": -1}), v)
    model = b.model([q, kt, v], [y])
    fused, report = _fuse(model)
    assert ops(fused) == ops(model) and "broadcasts rank 4 by 2" in report.declined[0]["reason"]
    assert_same(model, fused, {"q": _rand(B, N, S, H), "kt": _rand(H, S), "v": _rand(B, N, S, H)})
