import numpy as np
import onnx_graphsurgeon as gs
import pytest

from fusion_helpers import Builder, apply, assert_same, ops
from trtcompile.passes.group_query_heads import group_query_heads

HEADS, KV_HEADS, DIM, S, T = 6, 2, 8, 3, 7


def _gqa(mask_shape=(1, 1, S, T), layers=2, attrs=None, mask_dtype=np.bool_, seq=S):
    #  q_i [1, 6, S, 8] ──┐
    #  k, v [1, 2, T, 8] ──┼── Attention(q_num_heads 6, kv_num_heads 2) ── y_i      (i < layers, one mask)
    #  mask ──────────────┘
    b = Builder()
    k = gs.Variable("k", dtype=np.float32, shape=[1, KV_HEADS, T, DIM])
    v = gs.Variable("v", dtype=np.float32, shape=[1, KV_HEADS, T, DIM])
    mask = gs.Variable("mask", dtype=mask_dtype, shape=list(mask_shape))
    inputs, outputs = [k, v, mask], []
    for i in range(layers):
        q = gs.Variable(f"q{i}", dtype=np.float32, shape=[1, HEADS, seq, DIM])
        inputs.append(q)
        outputs.append(b.op("Attention", q, k, v, mask, dtype=np.float32,
                            attrs={"q_num_heads": HEADS, "kv_num_heads": KV_HEADS, **(attrs or {})}))
    return b.model(inputs, outputs, opset=24)


def _feeds(mask_shape=(1, 1, S, T), layers=2, mask_dtype=np.bool_, seq=S, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {"k": rng.standard_normal((1, KV_HEADS, T, DIM)).astype(np.float32),
             "v": rng.standard_normal((1, KV_HEADS, T, DIM)).astype(np.float32)}
    # Causal and a per-head/per-row pattern, so a row or head mixed up by the rewrite shows.
    allowed = rng.random(mask_shape) < 0.7
    allowed[..., 0] = True  # every row sees at least one key
    feeds["mask"] = allowed if mask_dtype == np.bool_ else np.where(allowed, 0.0, -1e4).astype(mask_dtype)
    for i in range(layers):
        feeds[f"q{i}"] = rng.standard_normal((1, HEADS, seq, DIM)).astype(np.float32)
    return feeds


@pytest.mark.parametrize("mask_shape, mask_dtype, folded_mask_op", [
    ((1, 1, S, T), np.bool_, "Tile"),           # the decoders' mask: one row block for every head
    ((1, HEADS, S, T), np.float32, "Reshape"),  # one additive mask per query head
    ((1, 1, 1, T), np.bool_, "Tile"),           # a decode step: one query row per head
])
def test_query_heads_fold_into_one_block_per_kv_head_exactly(mask_shape, mask_dtype, folded_mask_op):
    seq = mask_shape[2]
    model = _gqa(mask_shape, mask_dtype=mask_dtype, seq=seq)
    grouped, report = apply(model, group_query_heads, prepare=False)
    assert len(report.matched) == 2 and not report.declined
    assert report.matched[0]["group"] == HEADS // KV_HEADS
    counts = ops(grouped)
    # One Q reshape in and one out per layer; the mask is folded once for both layers.
    assert counts["Attention"] == 2
    assert counts.get("Tile", 0) == (1 if folded_mask_op == "Tile" else 0)
    assert counts["Reshape"] == 4 + (1 if folded_mask_op == "Reshape" else 0)
    for node in grouped.graph.node:
        if node.op_type == "Attention":
            attrs = {a.name: a.i for a in node.attribute}
            assert attrs["q_num_heads"] == attrs["kv_num_heads"] == KV_HEADS
    assert_same(model, grouped, _feeds(mask_shape, mask_dtype=mask_dtype, seq=seq), atol=1e-5)


@pytest.mark.parametrize("attrs, reason", [
    ({"is_causal": 1}, "is_causal"),
])
def test_causal_attention_is_declined_with_its_reason(attrs, reason):
    model = _gqa(attrs=attrs, layers=1)
    grouped, report = apply(model, group_query_heads, prepare=False)
    assert ops(grouped) == ops(model) and not report.matched
    assert reason in report.declined[0]["reason"]


def test_multi_head_and_rank_3_attention_are_left_alone():
    #  q [1, 2, S, 8], k/v [1, 2, T, 8]: already one query head per KV head
    b = Builder()
    q = gs.Variable("q", dtype=np.float32, shape=[1, KV_HEADS, S, DIM])
    k = gs.Variable("k", dtype=np.float32, shape=[1, KV_HEADS, T, DIM])
    y = b.op("Attention", q, k, k, dtype=np.float32)
    #  q3 [1, S, 48], k3 [1, T, 16]: rank 3, heads only in the attributes
    q3 = gs.Variable("q3", dtype=np.float32, shape=[1, S, HEADS * DIM])
    k3 = gs.Variable("k3", dtype=np.float32, shape=[1, T, KV_HEADS * DIM])
    y3 = b.op("Attention", q3, k3, k3, attrs={"q_num_heads": HEADS, "kv_num_heads": KV_HEADS}, dtype=np.float32)
    model = b.model([q, k, q3, k3], [y, y3], opset=24)
    grouped, report = apply(model, group_query_heads, prepare=False)
    assert ops(grouped) == ops(model) and not report.matched
    reasons = sorted(d["reason"] for d in report.declined)
    assert "not grouped-query" in reasons[1] and "rank 4" in reasons[0]
