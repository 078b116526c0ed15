"""Fuse scaled dot-product attention into one ONNX `Attention` node (opset 23).

Why: TensorRT (>= 10.14) imports ONNX `Attention` as IAttention, one fused kernel, and ONNX Runtime
runs it on CPU. The exporters rarely hand it over: below opset 23, with eager attention, with the
legacy exporter and in third-party files, attention is MatMul/Softmax/MatMul spread over
Reshape/Transpose, scales and masks; HF's grouped-query attention arrives expanded to the full
head count (`repeat_kv`), even inside the dynamo exporter's own opset-23 `Attention`.

Matched subgraph, anchored on each Softmax:

      Q [B,Nq,S,H]        K^T: Transpose(K, 0,1,3,2) | Transpose(K', 0,2,3,1) of [B,Skv,N,H]
        |                      | Reshape[-1,Skv,H] -> Transpose(0,2,1) -> Reshape (torch's SDPA)
     [Mul c_q]              [Mul c_k]
         \\                  /                K and V may be HF repeat_kv expansions:
          MatMul (Q, K^T)                        Kkv [B,Nkv,Skv,H] -> Unsqueeze(2) -> Expand
       [Mul c | Div c]                           [B,Nkv,n_rep,Skv,H] -> Reshape [B,Nq,Skv,H]
       [Add mask] [Where(bool, ., -inf)] ...     (a scale after a mask is applied to it too)
       [Cast]
          Softmax (last axis)
       [Where(IsNaN(p), 0, p)]  [Cast]
          MatMul (P, V [B,Nkv,Skv,Hv])
          Y [B,Nq,S,Hv]
  ->
      Attention(Q, K, V[, attn_mask]; scale = c_q*c_k*c, is_causal, q_num_heads, kv_num_heads)

- GQA/MQA stays native: the repeat_kv expansion is skipped and kv_num_heads < q_num_heads.
- Masks: one mask is passed as it is (bool True = attend, or additive); several are summed as
  additive masks; a mask that is provably all-pass (ViT's constant all-True) is dropped. A mask
  that is exactly causal (Trilu of ones, or a constant lower-triangular matrix) and the only mask
  becomes `is_causal=1`: top-left aligned, which is what these masks mean (no past K/V can
  enter this subgraph). TensorRT's parser cannot take a mask together with `is_causal`, so a
  causal+padding mask stays one mask. ONNX Runtime wants the mask's last two dims to be exactly
  [S, Skv], so a key-padding mask [B,1,1,Skv] gets an Expand. (Masks: attention_masks.py.)
- A query row whose keys are all masked (a padding query under left padding) comes out as 0
  from Attention, where MatMul/Softmax gave the mean of V; nothing downstream reads those rows.
- Rank-3 [B*N, S, H] batched attention is fused as one batch of B*N heads (Unsqueeze/Squeeze).
- Declined (left as they were, with the reason in the report): an intermediate used outside the
  block (e.g. attention probabilities returned to the user), a negative scale after the mask,
  ops between the MatMuls this pass does not understand, unknown or mismatched ranks/heads.
- Opset-23 `Attention` nodes already in the graph count as fused; their repeat_kv K/V inputs
  are replaced by the un-expanded ones, unused extra outputs are dropped, and what TensorRT's
  parser would reject (past inputs, a mask with is_causal, softcap) is a warning.
- Head counts: from the shapes; where the legacy exporter leaves them symbolic (Reshape to
  [B, S, -1, H]) a ShapeProbe infers shapes at two concrete input sizes (patterns.py).
The model's default opset is raised to 23 when anything is fused (below 13 through ONNX's
version converter, whose Flatten -> Softmax -> Reshape is matched too). A shortfall against
`ctx.model.num_layers` is a warning for the user.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.passes._opset import default_opset, ensure_opset
from trtcompile.passes.attention_masks import (MASK_FILL_MAX, Mask, expand_mask, is_causal, is_noop,
                                               mask_input)
from trtcompile.graph.context import PassContext
from trtcompile.passes.fusion import Decline, attempt
from trtcompile.passes._match import const_value, producer, rank
from trtcompile.passes._match import scalar as scalar_value
from trtcompile.passes.patterns import NameScope, ShapeProbe, infer_missing_shapes, repeat_kv_source, shape_value, sym_dims

log = logging.getLogger("trtcompile.passes")

ATTENTION_OPSET = 23
_SCORE_OPS = ("Mul", "Div", "Add", "Where", "Cast", "MatMul")


_Decline = Decline  # the fusion driver's decline: a candidate left as it was, with the reason


@dataclass
class _Match:
    softmax: gs.Node
    qk: gs.Node
    pv: gs.Node
    q: gs.Tensor
    k: gs.Tensor
    k_perm: list[int] | None  # K = Transpose(k, k_perm) when not None
    v: gs.Tensor
    scale: float
    masks: list[Mask]
    interior: list[gs.Node] = field(default_factory=list)


def fuse_attention(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    infer_missing_shapes(graph)
    if default_opset(graph) < 13 and any(_try_match(n, graph) for n in graph.nodes if n.op == "Softmax"):
        # Below 13 raising the opset goes through ONNX's version converter, a new graph: do it first.
        graph = ensure_opset(graph, ATTENTION_OPSET)
        infer_missing_shapes(graph)
    # Probe for static head counts up front (before any edit) when the shapes do not name them.
    unknown_heads = any(rank(t) == 4 and not isinstance(t.shape[1], int)
                        for n in graph.nodes if n.op == "MatMul" for t in n.inputs)
    names, probe = NameScope(graph), ShapeProbe(graph, now=unknown_heads)
    native = [n for n in graph.nodes if n.op == "Attention" and n.domain in ("", "ai.onnx", None)]
    fused = 0
    def match_and_rewrite(g: gs.Graph, softmax: gs.Node) -> dict:
        # Match and rewrite one block at a time (the next block's match sees this one's edits);
        # _rewrite may still Decline: its edits come last.
        return _rewrite(g, _match(softmax, g), names, probe)

    for softmax in [n for n in graph.nodes if n.op == "Softmax"]:
        detail = attempt(match_and_rewrite, graph, softmax, "fuse_attention")
        if isinstance(detail, str):
            ctx.report.decline(softmax.name, detail)
            continue
        ctx.report.match(softmax.name, **detail)
        fused += 1
    for node in native:
        ctx.report.match(node.name, **_native(node, graph, ctx, probe))
    if fused and default_opset(graph) < ATTENTION_OPSET:
        ctx.report.note(f"raised the default opset from {default_opset(graph)} to {ATTENTION_OPSET} for Attention")
        graph = ensure_opset(graph, ATTENTION_OPSET)
    graph.cleanup().toposort()

    total = fused + len(native)
    expected = ctx.model.num_layers
    if expected and total < expected:
        ctx.warn(f"fuse_attention: only {total} of {expected} attention layers became ONNX Attention "
                 f"(the config has {expected} layers); the rest stay MatMul/Softmax, which TensorRT "
                 "does not run as one fused kernel. The fuse_attention report lists the reasons.")
    log.info("Fused Attention: %d (and %d already native)", fused, len(native))
    return graph


def _try_match(softmax: gs.Node, graph: gs.Graph) -> bool:
    try:
        _match(softmax, graph)
        return True
    except _Decline:
        return False


# --- matching ---------------------------------------------------------------------------------


def _match(softmax: gs.Node, graph: gs.Graph) -> _Match:
    scores, probs, interior = softmax.inputs[0], softmax.outputs[0], [softmax]
    wrapper = _flattened_softmax(softmax)
    if wrapper is not None:
        scores, probs = wrapper[0].inputs[0], wrapper[1].outputs[0]
        interior.extend(wrapper)
    r = rank(scores)
    if r is None:
        raise _Decline("rank of the attention scores is unknown")
    if r not in (3, 4):
        raise _Decline(f"scores have rank {r}; only rank-3 and rank-4 attention is fused")
    axis = softmax.attrs.get("axis", -1 if graph.opset >= 13 else 1)
    if wrapper is None and axis not in (-1, r - 1):
        raise _Decline(f"Softmax over axis {axis}, not the key axis")

    pv = _forward_to_pv(probs, graph, interior)
    qk, scale, masks = _backward_to_qk(scores, interior)
    interior.append(qk)

    if rank(qk.inputs[0]) != r or rank(qk.inputs[1]) != r:
        raise _Decline(f"the Q·K MatMul broadcasts rank {rank(qk.inputs[0])} by {rank(qk.inputs[1])}")
    q, scale_q = _peel_scale(qk.inputs[0], graph, interior)
    kt, scale_k = _peel_scale(qk.inputs[1], graph, interior)
    k, k_perm = _untranspose(kt, r)
    v = pv.inputs[1]
    _check_closed(interior + [pv], pv, graph)
    return _Match(softmax, qk, pv, q, k, k_perm, v, scale * scale_q * scale_k, masks, interior)


def _flattened_softmax(softmax: gs.Node) -> tuple[gs.Node, ...] | None:
    """ONNX's version converter turns an opset < 13 Softmax(axis=3) into
    Flatten(x, axis=3) -> Softmax(-1) -> Reshape(·, Shape(x)): the same last-axis softmax."""
    flatten = producer(softmax.inputs[0], "Flatten")
    readers = softmax.outputs[0].outputs
    if flatten is None or len(readers) != 1 or readers[0].op != "Reshape" or len(flatten.outputs[0].outputs) != 1:
        return None
    x, reshape = flatten.inputs[0], readers[0]
    r = rank(x)
    if r is None or flatten.attrs.get("axis", 1) not in (r - 1, -1) or softmax.attrs.get("axis", -1) not in (-1, 1):
        return None
    shape = producer(reshape.inputs[1], "Shape")
    same = shape is not None and shape.inputs[0] is x and not shape.attrs.get("start") and shape.attrs.get("end") is None
    if same:
        return flatten, reshape, shape
    if shape_value(reshape.inputs[1]) != sym_dims(x):
        return None
    return flatten, reshape


def _forward_to_pv(t: gs.Tensor, graph: gs.Graph, interior: list) -> gs.Node:
    """Softmax output -> [NaN guard] [Cast/Identity/Dropout] -> MatMul(P, V)."""
    for _ in range(6):
        if t in graph.outputs:
            raise _Decline(f"attention probabilities {t.name!r} are a graph output")
        readers = list(t.outputs)
        guard = _nan_guard(t, readers)
        if guard:
            interior.extend(guard)
            t = guard[-1].outputs[0]
            continue
        if len(readers) != 1:
            raise _Decline(f"attention probabilities {t.name!r} are read by {len(readers)} nodes")
        node = readers[0]
        if node.op in ("Cast", "Identity") or (node.op == "Dropout" and _inference_dropout(node)):
            interior.append(node)
            t = node.outputs[0]
            continue
        if node.op == "MatMul" and node.inputs[0] is t:
            return node
        raise _Decline(f"Softmax output goes to {node.op} {node.name!r}, not to a MatMul with V")
    raise _Decline("no MatMul with V after the Softmax")


def _nan_guard(t: gs.Tensor, readers: list) -> list | None:
    """torch's SDPA decomposition: Where(IsNaN(p), 0, p) (zeroes rows that were fully masked)."""
    if len(readers) != 2:
        return None
    isnan = next((n for n in readers if n.op == "IsNaN"), None)
    where = next((n for n in readers if n.op == "Where"), None)
    if isnan is None or where is None or len(isnan.outputs[0].outputs) != 1:
        return None
    if where.inputs[0] is not isnan.outputs[0] or where.inputs[2] is not t or scalar_value(where.inputs[1]) != 0:
        return None
    return [isnan, where]


def _inference_dropout(node: gs.Node) -> bool:
    if len(node.outputs) > 1 and node.outputs[1].outputs:
        return False
    training = const_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    return training is None and len(node.inputs) <= 2 or training is not None and not bool(training)


def _backward_to_qk(t: gs.Tensor, interior: list) -> tuple[gs.Node, float, list[Mask]]:
    """Softmax input back to the Q·K^T MatMul through scales, masks and casts."""
    scale, masks = 1.0, []
    for _ in range(10):
        node = producer(t)
        if node is None:
            raise _Decline("the scores do not come from a MatMul")
        if node.op == "MatMul":
            return node, scale, masks
        if node.op == "Cast":
            interior.append(node)
            t = node.inputs[0]
            continue
        if node.op in ("Mul", "Div"):
            factor, other = _scalar_operand(node)
            if factor is None:
                raise _Decline(f"{node.op} {node.name!r} on the scores is not by a scalar constant")
            scale = scale * factor if node.op == "Mul" else scale / factor
            interior.append(node)
            t = other
            continue
        if node.op == "Add":
            a, b = node.inputs
            a_scores, b_scores = _leads_to_matmul(a), _leads_to_matmul(b)
            if a_scores == b_scores:
                raise _Decline(f"cannot tell the scores from the mask at Add {node.name!r}")
            if scale <= 0:
                raise _Decline(f"non-positive scale {scale} applied after the mask at Add {node.name!r}")
            scores, mask = (a, b) if a_scores else (b, a)
            masks.append(Mask(mask, "additive", factor=scale))
            interior.append(node)
            t = scores
            continue
        if node.op == "Where":
            cond, x, y = node.inputs
            fill_y, fill_x = scalar_value(y), scalar_value(x)
            if scale <= 0:
                raise _Decline(f"non-positive scale {scale} applied after the mask at Where {node.name!r}")
            if fill_y is not None and fill_y <= MASK_FILL_MAX and _leads_to_matmul(x):
                masks.append(Mask(cond, "bool"))
                t = x
            elif fill_x is not None and fill_x <= MASK_FILL_MAX and _leads_to_matmul(y):
                masks.append(Mask(cond, "bool", inverted=True))
                t = y
            else:
                raise _Decline(f"Where {node.name!r} on the scores is not a mask with a large negative fill")
            interior.append(node)
            continue
        raise _Decline(f"{node.op} {node.name!r} between the Q·K MatMul and Softmax")
    raise _Decline("too many nodes between the Q·K MatMul and Softmax")


def _scalar_operand(node: gs.Node) -> tuple[float | None, gs.Tensor | None]:
    """(c, x) for Mul(x, c) / Mul(c, x) / Div(x, c) with a one-element constant c."""
    a, b = node.inputs
    if scalar_value(b) is not None:
        return scalar_value(b), a
    if node.op == "Mul" and scalar_value(a) is not None:
        return scalar_value(a), b
    return None, None


def _leads_to_matmul(t: gs.Tensor, depth: int = 8) -> bool:
    """Does `t` come from a MatMul through score-side ops (Mul/Div/Add/Where/Cast)?"""
    node = producer(t)
    if node is None or depth == 0 or node.op not in _SCORE_OPS:
        return False
    if node.op == "MatMul":
        return True
    return any(_leads_to_matmul(i, depth - 1) for i in node.inputs if not isinstance(i, gs.Constant))


def _peel_scale(t: gs.Tensor, graph: gs.Graph, interior: list) -> tuple[gs.Tensor, float]:
    """Q*c or K^T*c feeding only the Q·K MatMul: fold c into the scale (torch's SDPA splits
    1/sqrt(H) into sqrt on each side)."""
    scale = 1.0
    while True:
        node = producer(t, "Mul", "Div")
        if node is None or len(t.outputs) != 1 or t in graph.outputs:
            return t, scale
        factor, other = _scalar_operand(node)
        if factor is None:
            return t, scale
        scale = scale * factor if node.op == "Mul" else scale / factor
        interior.append(node)
        t = other


def _untranspose(kt: gs.Tensor, r: int) -> tuple[gs.Tensor, list[int] | None]:
    """Given K^T [.., H, Skv], find K [.., Skv, H]: (source, perm) meaning K = Transpose(source, perm)."""
    swap = list(range(r - 2)) + [r - 1, r - 2]
    node = producer(kt, "Transpose")
    if node is not None:
        perm = node.attrs.get("perm") or list(reversed(range(r)))
        if len(perm) != r:
            raise _Decline(f"K^T transpose {node.name!r} has rank {len(perm)}, not {r}")
        composed = [perm[i] for i in swap]
        if composed == list(range(r)):
            return node.inputs[0], None
        return node.inputs[0], composed
    if r == 4:
        k = _sdpa_transpose(kt)
        if k is not None:
            return k, None
    return kt, swap


def _sdpa_transpose(kt: gs.Tensor) -> gs.Tensor | None:
    """torch's SDPA decomposition (opset < 23) transposes K as
    K [B,N,S,H] -> Reshape [-1,S,H] -> Transpose(0,2,1) -> Reshape [B,N,H,S]; return K."""
    outer = producer(kt, "Reshape")
    tr = producer(outer.inputs[0], "Transpose") if outer is not None else None
    inner = producer(tr.inputs[0], "Reshape") if tr is not None else None
    if inner is None or tr.attrs.get("perm") != [0, 2, 1]:
        return None
    k = inner.inputs[0]
    dims = sym_dims(k)
    first, second = shape_value(inner.inputs[1]), shape_value(outer.inputs[1])
    if dims is None or len(dims) != 4 or first is None or second is None:
        return None
    if len(first) != 3 or first[0] != -1 or first[1:] != dims[2:]:
        return None
    if second != [dims[0], dims[1], dims[3], dims[2]]:
        return None
    return k


def _check_closed(nodes: list, pv: gs.Node, graph: gs.Graph) -> None:
    """No intermediate of the block may be read outside it (it would keep the old nodes alive)."""
    inside = set(id(n) for n in nodes)
    for node in nodes:
        if node is pv:
            continue
        for t in node.outputs:
            if t in graph.outputs:
                raise _Decline(f"intermediate {t.name!r} is a graph output")
            outside = [c for c in t.outputs if id(c) not in inside]
            if outside:
                raise _Decline(f"intermediate {t.name!r} is also read by {outside[0].op} {outside[0].name!r}")


def _static_dim(t: gs.Tensor, axis: int, probe: ShapeProbe):
    """An int where the dim is static (from the graph's shapes, else from the probe), else the
    symbolic name or None."""
    dim = t.shape[axis] if t.shape is not None and axis < len(t.shape) else None
    if isinstance(dim, int):
        return dim
    static = probe.static(t)
    return static[axis] if static is not None and axis < len(static) and static[axis] is not None else dim


# --- rewriting --------------------------------------------------------------------------------


def _rewrite(graph: gs.Graph, m: _Match, names: NameScope, probe: ShapeProbe) -> dict:
    r = rank(m.q)
    if r is None or rank(m.v) is None or rank(m.k) is None:
        raise _Decline("rank of Q, K or V is unknown")
    if not (rank(m.q) == rank(m.k) == rank(m.v) == rank(m.qk.outputs[0])):
        raise _Decline(f"Q/K/V ranks {rank(m.q)}/{rank(m.k)}/{rank(m.v)} differ")
    dtype = m.q.dtype
    base = m.softmax.name or "attention"

    # K in [.., Skv, H] layout, then GQA: skip HF's repeat_kv expansion on both K and V.
    k_shape = None
    if m.k_perm is not None and m.k.shape is not None:
        k_shape = [m.k.shape[p] for p in m.k_perm]
    k_src, k_rep = repeat_kv_source(m.k, probe) if m.k_perm is None and r == 4 else (m.k, 1)
    v_src, v_rep = repeat_kv_source(m.v, probe) if r == 4 else (m.v, 1)
    if k_rep != v_rep:
        k_src, v_src, k_rep = m.k, m.v, 1
    k_dims = k_shape if m.k_perm is not None else k_src.shape
    q_dims = m.q.shape

    # Shape checks: what MatMul broadcasting allows but Attention does not.
    if k_dims is not None:
        for axis, what in ((0, "batch"), (r - 1, "head size")):
            if isinstance(q_dims[axis], int) and isinstance(k_dims[axis], int) and q_dims[axis] != k_dims[axis]:
                raise _Decline(f"Q and K {what} differ ({q_dims[axis]} vs {k_dims[axis]})")
    head_axis = 1 if r == 4 else 0
    nq = _static_dim(m.q, head_axis, probe)
    nkv = (_static_dim(m.k, m.k_perm[head_axis], probe) if m.k_perm is not None
           else _static_dim(k_src, head_axis, probe))
    nv = _static_dim(v_src, head_axis, probe)
    if isinstance(nkv, int) and isinstance(nv, int) and nkv != nv:
        raise _Decline(f"K has {nkv} heads and V {nv}")
    if isinstance(nq, int) and isinstance(nkv, int) and nq % nkv:
        raise _Decline(f"{nq} query heads are not a multiple of {nkv} key/value heads")
    # Unknown head counts are safe to fuse: MatMul only broadcasts K/V heads when they are 1 or
    # equal to Q's, and Attention reads the same from the 4-D shapes (1 = MQA). The attributes
    # are then left out.

    masks = [mk for mk in m.masks if not is_noop(mk)]
    for mk in masks:
        if rank(mk.tensor) is not None and rank(mk.tensor) > r:
            raise _Decline(f"mask {mk.tensor.name!r} has rank {rank(mk.tensor)} > {r}")
    causal = len(masks) == 1 and is_causal(masks[0])

    new_nodes: list[gs.Node] = []

    def add(op, inputs, attrs=None, out_dtype=None, out_shape=None, hint=""):
        out = gs.Variable(names(f"{base}/{hint or op}_out"), dtype=out_dtype, shape=out_shape)
        new_nodes.append(gs.Node(op, name=names(f"{base}/{hint or op}"), inputs=inputs, outputs=[out],
                                 attrs=attrs or {}))
        return out

    def unsqueeze0(t):
        shape = None if t.shape is None else [1, *t.shape]
        axes = gs.Constant(names(f"{base}/axes0"), np.array([0], np.int64))
        return add("Unsqueeze", [t, axes], out_dtype=t.dtype, out_shape=shape)

    k_in = k_src
    if m.k_perm is not None:
        k_in = add("Transpose", [m.k], {"perm": m.k_perm}, out_dtype=m.k.dtype, out_shape=k_shape, hint="K")
    attn_mask = None
    if masks and not causal:
        attn_mask = mask_input(masks, dtype, add, names, base)
        attn_mask = expand_mask(attn_mask, m.q, k_in, add, base)
    q_in, v_in = m.q, v_src
    if r == 3:
        q_in, k_in, v_in = unsqueeze0(q_in), unsqueeze0(k_in), unsqueeze0(v_in)
        if attn_mask is not None and rank(attn_mask) == 3:
            attn_mask = unsqueeze0(attn_mask)

    attrs = {"scale": float(m.scale), "is_causal": int(causal)}
    if isinstance(nq, int) and isinstance(nkv, int):
        attrs["q_num_heads"], attrs["kv_num_heads"] = int(nq), int(nkv)
    y = m.pv.outputs[0]
    m.pv.outputs.clear()
    inputs = [q_in, k_in, v_in] + ([attn_mask] if attn_mask is not None else [])
    if r == 4:
        new_nodes.append(gs.Node("Attention", name=names(f"{base}/Attention"), inputs=inputs,
                                 outputs=[y], attrs=attrs))
    else:
        y4 = add("Attention", inputs, attrs, out_dtype=y.dtype,
                 out_shape=None if y.shape is None else [1, *y.shape])
        new_nodes.append(gs.Node("Squeeze", name=names(f"{base}/Squeeze"),
                                 inputs=[y4, gs.Constant(names(f"{base}/axes0"), np.array([0], np.int64))],
                                 outputs=[y]))
    graph.nodes.extend(new_nodes)
    detail = {"q_num_heads": attrs.get("q_num_heads"), "kv_num_heads": attrs.get("kv_num_heads"),
              "scale": round(float(m.scale), 6), "is_causal": bool(causal),
              "mask": "none" if attn_mask is None else "+".join(mk.kind for mk in masks),
              "rank": r, "gqa_unexpanded": k_rep > 1}
    return detail


def _native(node: gs.Node, graph: gs.Graph, ctx: PassContext, probe: ShapeProbe) -> dict:
    """An exporter's own Attention: give it un-expanded K/V (native GQA), note TensorRT limits."""
    detail: dict = {"native": True}
    q, k, v = node.inputs[:3]
    if rank(q) == 4:
        k_src, k_rep = repeat_kv_source(k, probe)
        v_src, v_rep = repeat_kv_source(v, probe)
        if k_rep > 1 and k_rep == v_rep:
            node.inputs[1], node.inputs[2] = k_src, v_src
            detail["gqa_unexpanded"] = True
        # Head counts written out where static, as on the nodes this pass creates.
        nq, nkv = _static_dim(q, 1, probe), _static_dim(node.inputs[1], 1, probe)
        if isinstance(nq, int) and isinstance(nkv, int):
            node.attrs["q_num_heads"], node.attrs["kv_num_heads"] = nq, nkv
            # Also when the exporter already handed Attention the un-expanded K/V (nothing to undo).
            detail.setdefault("gqa_unexpanded", nkv < nq)
    has_past = any(t.name for t in node.inputs[4:6])
    if len(node.outputs) > 1 and not has_past and not any(t.outputs or t in graph.outputs for t in node.outputs[1:]):
        while len(node.outputs) > 1:  # unused present/qk outputs: TensorRT's parser takes one only
            node.outputs.pop()
    problems = []
    if has_past:
        problems.append("past_key/past_value inputs")
    if any(t.outputs or t in graph.outputs for t in node.outputs[1:]):
        problems.append("more than one output")
    if node.attrs.get("softcap", 0.0):
        problems.append("softcap")
    if "softmax_precision" in node.attrs:
        problems.append("softmax_precision")
    if node.attrs.get("is_causal", 0) and len(node.inputs) > 3 and node.inputs[3].name:
        problems.append("a mask together with is_causal")
    if problems:
        ctx.warn(f"fuse_attention: Attention {node.name!r} has {', '.join(problems)}, which TensorRT's "
                 "ONNX parser rejects")
        detail["tensorrt_problems"] = problems
    detail.update({k: node.attrs.get(k) for k in ("q_num_heads", "kv_num_heads", "scale", "is_causal")})
    return detail
