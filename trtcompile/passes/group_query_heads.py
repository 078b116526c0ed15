"""Grouped-query attention as one query block per KV head: K and V are read once per KV head.

ONNX Runtime's CPU `Attention` (1.32, core/providers/cpu/llm/attention.cc) runs one GEMM per query
head: with q_num_heads = G * kv_num_heads every KV head's K and V are read G times, and Q.K^T
(transposed K, scale != 1) goes through MLAS's packing SGEMM, which copies K once per query head.
At decode the query is one row per head, so the cache is read G times for G rows of work. Folding
the G query heads that share a KV head into the query's sequence axis gives an Attention whose
heads are the KV heads: each K/V head is packed and read once, for G*S query rows
(`trtcompile bench decode` on SmolLM2, G = 3, 30 layers, context 2048: Attention 12.2 -> 8.4 ms
per step; one layer alone, FP32 cache of 2112 slots: 13.8 -> 9.8 ms on one thread, about the
memory-bandwidth floor of reading it once).

```
  q [B, Nq, S, D] ──────────────────────┐
  k, v [B, Nkv, T, D] ─────────────────── Attention(q_num_heads=Nq, kv_num_heads=Nkv) ── y [B, Nq, S, D]
  mask [B, 1, S, T] ────────────────────┘
  =>
  q ── Reshape [B, Nkv, G*S, D] ────────┐
  k, v ───────────────────────────────── Attention(q_num_heads=Nkv, kv_num_heads=Nkv) ── Reshape [B, Nq, S, D] ── y
  mask ── Tile [1, 1, G, 1] ────────────┘        (row g*S + s of a KV head is query head kv*G + g, position s)
```

The cost is on prefill: ORT splits its Attention across threads by (batch x heads), so at batch 1
three KV heads share two threads worse than nine query heads did, and a bool mask is converted to
float per layer at G times its size (SmolLM2, a 512-token chunk, loaded machine: +4% on one thread,
+7% to +18% on two). Decode, which the cache read dominates at long contexts, gains more.

The Reshapes move no data (heads kv*G .. kv*G+G-1 are contiguous, as ONNX's GQA maps them), and the
mask is tiled once per graph, not per layer. The result is the same standard Attention TensorRT's
importer takes (rank-4 Q/K/V, no past inputs, one output, an explicit mask, no `is_causal`), now
with as many query heads as KV heads, so one graph still serves both backends; on TensorRT the
grouped form is the query packing its own GQA decode kernels do, unmeasured here (no TensorRT).
Declined: rank-3 inputs, `is_causal` (its diagonal would be wrong for the folded rows), past K/V
inputs, extra outputs, unknown head counts, a mask whose head axis is neither 1 nor q_num_heads.
`--disable-pass group_query_heads` keeps the native GQA form.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.graph.context import PassContext


def _heads(node: gs.Node) -> tuple[int, int, int] | str:
    """(q heads, kv heads, head size) of a rank-4 Attention worth grouping, else the reason not."""
    q, k = node.inputs[0], node.inputs[1]
    if q.shape is None or k.shape is None or len(q.shape) != 4 or len(k.shape) != 4:
        return "Q/K are not rank 4 with known ranks"
    nq, nkv, dim = q.shape[1], k.shape[1], q.shape[3]
    if not all(isinstance(d, int) for d in (nq, nkv, dim)):
        return f"head counts or head size not static (Q {q.shape}, K {k.shape})"
    if nq == nkv:
        return "not grouped-query attention (as many query heads as KV heads)"
    if nkv <= 0 or nq % nkv:
        return f"{nq} query heads are not a multiple of {nkv} KV heads"
    if int(node.attrs.get("is_causal", 0)):
        return "is_causal: its diagonal would not follow the folded query rows"
    if len(node.inputs) > 4 and any(t.name for t in node.inputs[4:6]):
        return "past_key/past_value inputs"
    if len(node.outputs) > 1:
        return "more than one output"
    return nq, nkv, dim


def _grouped_mask(graph: gs.Graph, mask: gs.Tensor, group: int, nq: int, nkv: int, memo: dict) -> gs.Tensor | str:
    """The mask for the folded query rows: tiled along the query axis (shared by every layer that
    reads the same mask), or reshaped where it has one row block per query head."""
    if not mask.name:
        return mask
    shape = mask.shape
    if shape is None:
        return f"mask {mask.name!r} has no known rank"
    # ONNX Runtime does not broadcast a mask's query axis (its rows must equal Q's), so a [.., 1, T]
    # mask of a one-token step is tiled too.
    heads = shape[-3] if len(shape) >= 3 else 1
    key = (mask.name, group, heads == nq)
    if key in memo:
        return memo[key]
    if heads == 1:
        reps = np.ones(len(shape), np.int64)
        reps[-2] = group
        out = gs.Variable(f"{mask.name}_grouped_{group}", dtype=mask.dtype)
        graph.nodes.append(gs.Node("Tile", name=f"{mask.name}_tile_{group}",
                                   inputs=[mask, gs.Constant(f"{mask.name}_tile_{group}_reps", reps)], outputs=[out]))
    elif heads == nq and len(shape) == 4:
        out = gs.Variable(f"{mask.name}_grouped_{group}", dtype=mask.dtype)
        graph.nodes.append(gs.Node("Reshape", name=f"{mask.name}_group_{group}",
                                   inputs=[mask, gs.Constant(f"{mask.name}_group_{group}_shape",
                                                             np.array([0, nkv, -1, 0], np.int64))],
                                   outputs=[out]))
    else:
        return (f"mask {mask.name!r} of shape {shape}: only a head axis of 1, or one of {nq} heads in a rank-4 "
                f"mask, folds with the query heads")
    memo[key] = out
    return out


def group_query_heads(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    memo: dict = {}
    for node in [n for n in graph.nodes if n.op == "Attention"]:
        heads = _heads(node)
        if isinstance(heads, str):
            ctx.report.decline(node.name, heads)
            continue
        nq, nkv, dim = heads
        group = nq // nkv
        mask = node.inputs[3] if len(node.inputs) > 3 else None
        grouped_mask = _grouped_mask(graph, mask, group, nq, nkv, memo) if mask is not None else None
        if isinstance(grouped_mask, str):
            ctx.report.decline(node.name, grouped_mask)
            continue
        q, y = node.inputs[0], node.outputs[0]
        folded_q = gs.Variable(f"{q.name}_grouped", dtype=q.dtype)
        graph.nodes.append(gs.Node("Reshape", name=f"{node.name}_group_q", outputs=[folded_q], inputs=[
            q, gs.Constant(f"{node.name}_group_q_shape", np.array([0, nkv, -1, dim], np.int64))]))
        folded_y = gs.Variable(f"{y.name}_grouped", dtype=y.dtype)
        node.outputs.clear()  # unhooks y from the Attention, so the Reshape can produce it
        node.outputs.append(folded_y)
        graph.nodes.append(gs.Node("Reshape", name=f"{node.name}_ungroup", outputs=[y], inputs=[
            folded_y, gs.Constant(f"{node.name}_ungroup_shape", np.array([0, nq, -1, dim], np.int64))]))
        node.inputs[0] = folded_q
        if mask is not None:
            node.inputs[3] = grouped_mask
        node.attrs["q_num_heads"], node.attrs["kv_num_heads"] = nkv, nkv
        ctx.report.match(node.name, q_heads=nq, kv_heads=nkv, group=group)
    return graph
