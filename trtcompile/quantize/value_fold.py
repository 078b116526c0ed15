"""Where AWQ's 1/s for the attention output projection (o_proj) can go: V's columns.

o_proj reads the attention output, which no norm or constant produces, so 1/s would need a Mul of
its own in every layer. But attention is linear in V per channel: scaling V's channel (g, d) by f
scales channel d of every query head that reads kv head g by f. So when the scales are equal
across the query heads sharing a kv head (GQA: head h reads kv head h // (Nq / Nkv)), 1/s folds
into the V columns of the projection that makes V, and the graph gains no op. The cache then holds
the scaled V, written and read by the same graph.

    h ── MatMul([Wq | Wk | Wv]) ── Split ── v ── Reshape [B, S, Nkv, D] ── Transpose(0, 2, 1, 3)
        ── (Concat(past, ·) ── present) ── Attention(q, k, v) ── (Reshape [B, Nq, S, D]: the
        group_query_heads form) ── Transpose(0, 2, 1, 3) ── Reshape [B, S, Nq * D] ── x ── MatMul(W_o)

Anything else (rank-3 Attention inputs, V read elsewhere, a bias) is declined: the caller keeps
its explicit Mul.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs


@dataclass
class ValueFold:
    linear: tuple  # (MatMul, bias Add or None, columns) of V, as smoothquant._linear_producer gives
    q_heads: int
    kv_heads: int
    head_dim: int

    def tied(self, per_channel: np.ndarray) -> np.ndarray:
        """A per-channel statistic of x averaged over the query heads that share a kv head, so
        scales made from it fold into V."""
        rep = self.q_heads // self.kv_heads
        grouped = np.asarray(per_channel).reshape(self.kv_heads, rep, self.head_dim).mean(axis=1)
        return np.repeat(grouped, rep, axis=0).reshape(-1)

    def fold(self, inv: np.ndarray) -> str:
        from trtcompile.quantize.smoothquant import _scale_columns

        rep = self.q_heads // self.kv_heads
        grouped = inv.reshape(self.kv_heads, rep, self.head_dim)
        assert np.allclose(grouped, grouped[:, :1, :]), "scales not tied across the heads sharing V"
        _scale_columns(self.linear, grouped[:, 0, :].reshape(-1).astype(np.float32))
        return f"folded into the V columns of {self.linear[0].name!r}"


def _only_producer(t, op: str, perm=None):
    """t's producer if it is `op` (with `perm`, for a Transpose) and t has no other reader."""
    if not isinstance(t, gs.Variable) or len(t.outputs) != 1 or not t.inputs:
        return None
    node = t.inputs[0]
    if node.op != op or (perm is not None and list(node.attrs.get("perm", [])) != perm):
        return None
    return node


def value_fold(x: gs.Variable, channels: int) -> ValueFold | None:
    """The fold for o_proj's input x (`channels` wide), or None where the pattern above does not hold."""
    from trtcompile.quantize.smoothquant import _linear_producer

    reshape = x.inputs[0] if x.inputs else None
    if reshape is None or reshape.op != "Reshape":
        return None
    transpose = _only_producer(reshape.inputs[0], "Transpose", [0, 2, 1, 3])
    if transpose is None:
        return None
    out = transpose.inputs[0]
    # group_query_heads' form: Attention over the kv heads, its rows regrouped by a Reshape
    # [B, Nkv, G*S, D] -> [B, Nq, S, D] (query head kv*G + g, as in plain GQA).
    regroup = _only_producer(out, "Reshape")
    attention = _only_producer(out if regroup is None else regroup.inputs[0], "Attention")
    if attention is None or len(attention.inputs) < 3:
        return None
    kv_heads = attention.attrs.get("kv_num_heads")
    if not kv_heads or attention.attrs.get("q_num_heads", 0) % kv_heads:
        return None
    v = attention.inputs[2]
    if v.inputs and v.inputs[0].op == "Concat":  # the cache: past values, then this step's
        concat = v.inputs[0]
        if any(p.inputs for p in concat.inputs[:-1]):  # the past must be graph inputs
            return None
        v = concat.inputs[-1]
    v_transpose = _only_producer(v, "Transpose", [0, 2, 1, 3])
    v_reshape = _only_producer(v_transpose.inputs[0], "Reshape") if v_transpose is not None else None
    if v_reshape is None:
        return None
    linear = _linear_producer(v_reshape.inputs[0])
    if linear is None or linear[1] is not None:
        return None
    matmul, _, columns = linear
    width = np.asarray(matmul.inputs[1].values).shape[1] if columns is None else columns.stop - columns.start
    head_dim = width // kv_heads
    q_heads = channels // head_dim if head_dim else 0
    if width % kv_heads or not q_heads or channels % head_dim or q_heads % kv_heads:
        return None
    if regroup is None and q_heads != attention.attrs.get("q_num_heads"):
        return None
    return ValueFold(linear, q_heads, kv_heads, head_dim)
