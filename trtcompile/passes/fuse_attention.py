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
       [Add mask] [Where(bool, ., -inf)] ...
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
  causal+padding mask stays one mask.
- Rank-3 [B*N, S, H] batched attention is fused as one batch of B*N heads (Unsqueeze/Squeeze).
- Declined (left as they were, with the reason in the report): an intermediate used outside the
  block (e.g. attention probabilities returned to the user), a scale applied after the mask,
  ops between the MatMuls this pass does not understand, unknown or mismatched ranks/heads.
- Opset-23 `Attention` nodes already in the graph count as fused; their repeat_kv K/V inputs
  are replaced by the un-expanded ones.
The model's default opset is raised to 23 when anything is fused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.passes._opset import default_opset, ensure_opset
from trtcompile.passes.context import PassContext
from trtcompile.passes.patterns import (NameScope, const_value, dims_equal, infer_missing_shapes,
                                        producer, rank, scalar_value, shape_value)

log = logging.getLogger("trtcompile.passes")

ATTENTION_OPSET = 23
# A Where fill value at or below this is a mask (HF uses finfo.min, others -1e4, -1e9 or -inf).
MASK_FILL_MAX = -1e4
_SCORE_OPS = ("Mul", "Div", "Add", "Where", "Cast", "MatMul")


class _Decline(Exception):
    """A candidate that is left as it was; the message is the reason in the report."""


@dataclass
class _Mask:
    tensor: gs.Tensor
    kind: str  # "additive" or "bool"
    inverted: bool = False  # bool mask that is True where masked (Where(cond, -inf, scores))


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
    masks: list[_Mask]
    interior: list[gs.Node] = field(default_factory=list)


def fuse_attention(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    infer_missing_shapes(graph)
    if default_opset(graph) < 13 and any(_try_match(n, graph) for n in graph.nodes if n.op == "Softmax"):
        # Below 13 raising the opset goes through ONNX's version converter, a new graph: do it first.
        graph = ensure_opset(graph, ATTENTION_OPSET)
        infer_missing_shapes(graph)
    names = NameScope(graph)
    native = [n for n in graph.nodes if n.op == "Attention" and n.domain in ("", "ai.onnx", None)]
    fused = 0
    for softmax in [n for n in graph.nodes if n.op == "Softmax"]:
        try:
            match = _match(softmax, graph)
            detail = _rewrite(graph, match, names)
        except _Decline as exc:
            ctx.report.decline(softmax.name, str(exc))
            continue
        ctx.report.match(softmax.name, **detail)
        fused += 1
    for node in native:
        ctx.report.match(node.name, **_native(node, graph, ctx))
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
    scores = softmax.inputs[0]
    r = rank(scores)
    if r is None:
        raise _Decline("rank of the attention scores is unknown")
    if r not in (3, 4):
        raise _Decline(f"scores have rank {r}; only rank-3 and rank-4 attention is fused")
    axis = softmax.attrs.get("axis", -1 if graph.opset >= 13 else 1)
    if axis not in (-1, r - 1):
        raise _Decline(f"Softmax over axis {axis}, not the key axis")

    interior = [softmax]
    pv = _forward_to_pv(softmax, graph, interior)
    qk, scale, masks = _backward_to_qk(softmax, interior)
    interior.append(qk)

    q, scale_q = _peel_scale(qk.inputs[0], graph, interior)
    kt, scale_k = _peel_scale(qk.inputs[1], graph, interior)
    k, k_perm = _untranspose(kt, r)
    v = pv.inputs[1]
    _check_closed(interior + [pv], pv, graph)
    return _Match(softmax, qk, pv, q, k, k_perm, v, scale * scale_q * scale_k, masks, interior)


def _forward_to_pv(softmax: gs.Node, graph: gs.Graph, interior: list) -> gs.Node:
    """Softmax -> [NaN guard] [Cast/Identity/Dropout] -> MatMul(P, V)."""
    t = softmax.outputs[0]
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


def _backward_to_qk(softmax: gs.Node, interior: list) -> tuple[gs.Node, float, list[_Mask]]:
    """Softmax input back to the Q·K^T MatMul through scales, masks and casts."""
    t = softmax.inputs[0]
    scale, masks, scaled = 1.0, [], False
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
            scaled = True
            interior.append(node)
            t = other
            continue
        if node.op == "Add":
            a, b = node.inputs
            a_scores, b_scores = _leads_to_matmul(a), _leads_to_matmul(b)
            if a_scores == b_scores:
                raise _Decline(f"cannot tell the scores from the mask at Add {node.name!r}")
            if scaled:
                raise _Decline(f"scale applied after the mask at Add {node.name!r}")
            scores, mask = (a, b) if a_scores else (b, a)
            masks.append(_Mask(mask, "additive"))
            interior.append(node)
            t = scores
            continue
        if node.op == "Where":
            cond, x, y = node.inputs
            fill_y, fill_x = scalar_value(y), scalar_value(x)
            if scaled:
                raise _Decline(f"scale applied after the mask at Where {node.name!r}")
            if fill_y is not None and fill_y <= MASK_FILL_MAX and _leads_to_matmul(x):
                masks.append(_Mask(cond, "bool"))
                t = x
            elif fill_x is not None and fill_x <= MASK_FILL_MAX and _leads_to_matmul(y):
                masks.append(_Mask(cond, "bool", inverted=True))
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
        node = producer(t, ("Mul", "Div"))
        if node is None or len(t.outputs) != 1 or t in graph.outputs:
            return t, scale
        factor, other = _scalar_operand(node)
        if factor is None:
            return t, scale
        scale = scale * factor if node.op == "Mul" else scale / factor
        interior.append(node)
        t = other


def _sym_dims(t: gs.Tensor) -> list | None:
    """Shape with unknown dims named like `shape_value` names them (so the two compare)."""
    if t.shape is None:
        return None
    return [d if isinstance(d, int) or (isinstance(d, str) and d) else f"?{t.name}:{i}"
            for i, d in enumerate(t.shape)]


def _untranspose(kt: gs.Tensor, r: int) -> tuple[gs.Tensor, list[int] | None]:
    """Given K^T [.., H, Skv], find K [.., Skv, H]: (source, perm) meaning K = Transpose(source, perm)."""
    swap = list(range(r - 2)) + [r - 1, r - 2]
    node = producer(kt, "Transpose")
    if node is not None:
        perm = node.attrs.get("perm") or list(reversed(range(r)))
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
    dims = _sym_dims(k)
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


# --- masks ------------------------------------------------------------------------------------


def _all_true(t: gs.Tensor, depth: int = 6) -> bool:
    value = const_value(t)
    if value is not None:
        return value.size > 0 and bool(np.all(value.astype(bool)))
    node = producer(t, ("Expand", "Cast", "Reshape", "Unsqueeze", "Identity"))
    return node is not None and depth > 0 and _all_true(node.inputs[0], depth - 1)


def _is_noop(mask: _Mask) -> bool:
    """A mask that lets everything through: ViT's export adds Where(Expand(True), 0, -max)."""
    if mask.kind == "bool":
        return not mask.inverted and _all_true(mask.tensor)
    value = const_value(mask.tensor)
    if value is not None:
        return bool(np.all(value == 0))
    node = producer(mask.tensor, "Where")
    return node is not None and _all_true(node.inputs[0]) and scalar_value(node.inputs[1]) == 0


def _ones(t: gs.Tensor) -> bool:
    value = const_value(t)
    if value is not None:
        return value.size > 0 and bool(np.all(value == 1))
    node = producer(t, ("Expand", "ConstantOfShape", "Cast"))
    if node is None:
        return False
    if node.op == "ConstantOfShape":
        fill = node.attrs.get("value")
        return fill is not None and bool(np.all(np.asarray(fill.values) == 1))
    return _ones(node.inputs[0])


def _lower_triangle(t: gs.Tensor, depth: int = 6) -> bool | None:
    """True if `t` is True/1 exactly on the lower triangle (j <= i), False if exactly on the strict
    upper triangle, None if neither is provable."""
    value = const_value(t)
    if value is not None:
        if value.ndim < 2 or value.shape[-1] != value.shape[-2] or any(d != 1 for d in value.shape[:-2]):
            return None
        m = value.reshape(value.shape[-2:]).astype(bool)
        tril = np.tril(np.ones_like(m))
        return True if np.array_equal(m, tril) else False if np.array_equal(m, ~tril) else None
    node = producer(t)
    if node is None or depth == 0:
        return None
    if node.op == "Trilu":
        k = const_value(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1].name else 0
        if int(np.ravel(k)[0]) if np.size(k) else 0:
            return None
        if node.attrs.get("upper", 1) == 0 and _ones(node.inputs[0]):
            return True
        return None
    if node.op in ("Cast", "Identity", "Unsqueeze", "Expand"):
        return _lower_triangle(node.inputs[0], depth - 1)
    if node.op == "Not":
        inner = _lower_triangle(node.inputs[0], depth - 1)
        return None if inner is None else not inner
    if node.op == "Equal":
        a, b = node.inputs
        c = scalar_value(b)
        inner = _lower_triangle(a, depth - 1)
        if c is None or inner is None:
            return None
        return inner if c == 1 else (not inner) if c == 0 else None
    return None


def _is_causal(mask: _Mask) -> bool:
    """The mask is exactly causal (query i sees keys j <= i), provable from the graph."""
    if mask.kind == "bool":
        tri = _lower_triangle(mask.tensor)
        return tri is not None and tri != mask.inverted
    value = const_value(mask.tensor)
    if value is not None:
        if value.ndim < 2 or value.shape[-1] != value.shape[-2]:
            return False
        m = value.reshape(value.shape[-2:]) if value.size == value.shape[-1] ** 2 else None
        if m is None:
            return False
        lower = np.tril(np.ones(m.shape, bool))
        return bool(np.all(m[lower] == 0) and np.all(m[~lower] <= MASK_FILL_MAX))
    node = producer(mask.tensor, "Where")
    if node is None:
        return False
    cond, x, y = node.inputs
    tri = _lower_triangle(cond)
    fx, fy = scalar_value(x), scalar_value(y)
    if tri is None or fx is None or fy is None:
        return False
    if fx == 0 and fy <= MASK_FILL_MAX:
        return tri
    if fy == 0 and fx <= MASK_FILL_MAX:
        return not tri
    return False


# --- rewriting --------------------------------------------------------------------------------


def _rewrite(graph: gs.Graph, m: _Match, names: NameScope) -> dict:
    r = rank(m.q)
    if r is None or rank(m.v) is None or rank(m.k) is None:
        raise _Decline("rank of Q, K or V is unknown")
    if not (rank(m.q) == rank(m.k) == rank(m.v) == rank(m.softmax.inputs[0])):
        raise _Decline(f"Q/K/V ranks {rank(m.q)}/{rank(m.k)}/{rank(m.v)} differ")
    dtype = m.q.dtype
    base = m.softmax.name or "attention"

    # K in [.., Skv, H] layout, then GQA: skip HF's repeat_kv expansion on both K and V.
    k_shape = None
    if m.k_perm is not None and m.k.shape is not None:
        k_shape = [m.k.shape[p] for p in m.k_perm]
    k_src, k_rep = _repeat_kv_source(m.k) if m.k_perm is None and r == 4 else (m.k, 1)
    v_src, v_rep = _repeat_kv_source(m.v) if r == 4 else (m.v, 1)
    if k_rep != v_rep:
        k_src, v_src, k_rep = m.k, m.v, 1
    k_dims = k_shape if m.k_perm is not None else k_src.shape
    q_dims, v_dims = m.q.shape, v_src.shape

    # Shape checks: what MatMul broadcasting allows but Attention does not.
    if k_dims is not None:
        for axis, what in ((0, "batch"), (r - 1, "head size")):
            if isinstance(q_dims[axis], int) and isinstance(k_dims[axis], int) and q_dims[axis] != k_dims[axis]:
                raise _Decline(f"Q and K {what} differ ({q_dims[axis]} vs {k_dims[axis]})")
    nq = q_dims[1] if r == 4 else q_dims[0]
    nkv = (k_dims[1] if r == 4 else k_dims[0]) if k_dims is not None else None
    nv = v_dims[1] if r == 4 else v_dims[0]
    if isinstance(nkv, int) and isinstance(nv, int) and nkv != nv:
        raise _Decline(f"K has {nkv} heads and V {nv}")
    if isinstance(nq, int) and isinstance(nkv, int) and nq % nkv:
        raise _Decline(f"{nq} query heads are not a multiple of {nkv} key/value heads")
    # Unknown head counts are safe to fuse: MatMul only broadcasts K/V heads when they are 1 or
    # equal to Q's, and Attention reads the same from the 4-D shapes (1 = MQA). The attributes
    # are then left out.

    masks = [mk for mk in m.masks if not _is_noop(mk)]
    for mk in masks:
        if rank(mk.tensor) is not None and rank(mk.tensor) > r:
            raise _Decline(f"mask {mk.tensor.name!r} has rank {rank(mk.tensor)} > {r}")
    causal = len(masks) == 1 and _is_causal(masks[0])

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
        attn_mask = _mask_input(masks, dtype, add, names, base)
        attn_mask = _expand_mask(attn_mask, m.q, k_in, add, base)
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


def _mask_input(masks: list[_Mask], dtype, add, names: NameScope, base: str) -> gs.Tensor:
    """One mask as it is (bool True = attend, or additive in Q's dtype); several summed as additive."""
    if len(masks) == 1 and masks[0].kind == "bool":
        mk = masks[0]
        if not mk.inverted:
            return mk.tensor
        return add("Not", [mk.tensor], out_dtype=np.bool_, out_shape=mk.tensor.shape, hint="mask_not")
    total = None
    np_dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.float32)
    for mk in masks:
        t = mk.tensor
        if mk.kind == "bool":
            zero = gs.Constant(names(f"{base}/mask_zero"), np.array(0, np_dtype))
            low = gs.Constant(names(f"{base}/mask_low"), np.array(np.finfo(np_dtype).min, np_dtype))
            pair = [low, zero] if mk.inverted else [zero, low]
            t = add("Where", [t, *pair], out_dtype=np_dtype, out_shape=t.shape, hint="mask_additive")
        elif t.dtype is not None and np.dtype(t.dtype) != np_dtype:
            t = add("Cast", [t], {"to": _onnx_dtype(np_dtype)}, out_dtype=np_dtype, out_shape=t.shape,
                    hint="mask_cast")
        total = t if total is None else add("Add", [total, t], out_dtype=np_dtype, hint="mask_sum")
    return total


def _expand_mask(mask: gs.Tensor, q: gs.Tensor, k: gs.Tensor, add, base: str) -> gs.Tensor:
    """ONNX Runtime wants the mask's last two dims to be exactly [S, Skv] (no broadcasting there,
    unlike Add); BERT-style key-padding masks are [B,1,1,Skv]. Expand only where not provable."""
    if mask.shape is not None and len(mask.shape) >= 2 and q.shape is not None and k.shape is not None \
            and dims_equal(mask.shape[-2], q.shape[-2]) and dims_equal(mask.shape[-1], k.shape[-2]):
        return mask
    q_len = add("Shape", [q], {"start": -2, "end": -1}, out_dtype=np.int64, out_shape=[1], hint="q_len")
    k_len = add("Shape", [k], {"start": -2, "end": -1}, out_dtype=np.int64, out_shape=[1], hint="kv_len")
    target = add("Concat", [q_len, k_len], {"axis": 0}, out_dtype=np.int64, out_shape=[2], hint="mask_shape")
    shape = None
    if mask.shape is not None and q.shape is not None and k.shape is not None:
        shape = [*mask.shape[:-2], q.shape[-2], k.shape[-2]] if len(mask.shape) >= 2 else None
    return add("Expand", [mask, target], out_dtype=mask.dtype, out_shape=shape, hint="mask_expand")


def _onnx_dtype(np_dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))


def _repeat_kv_source(t: gs.Tensor) -> tuple[gs.Tensor, int]:
    """HF repeat_kv: Kkv [B,Nkv,S,H] -> Unsqueeze(2) -> Expand [B,Nkv,n,S,H] -> Reshape [B,Nkv*n,S,H].

    Returns (Kkv, n) when `t` is provably that expansion (head i reads KV head i // n, the
    grouping ONNX Attention uses), else (t, 1)."""
    reshape = producer(t, "Reshape")
    expand = producer(reshape.inputs[0], "Expand") if reshape is not None else None
    unsq = producer(expand.inputs[0], "Unsqueeze") if expand is not None else None
    if unsq is None:
        return t, 1
    axes = const_value(unsq.inputs[1]) if len(unsq.inputs) > 1 else np.asarray(unsq.attrs.get("axes", []))
    src = unsq.inputs[0]
    dims = _sym_dims(src)
    if axes is None or [int(a) for a in np.ravel(axes)] not in ([2], [-3]) or dims is None or len(dims) != 4:
        return t, 1
    if not isinstance(dims[1], int):
        return t, 1
    target = shape_value(expand.inputs[1])
    out = _sym_dims(expand.outputs[0])
    n_rep = None
    if target is not None and len(target) == 5 and isinstance(target[2], int):
        if all(target[i] in (1, dims[j]) for i, j in ((0, 0), (1, 1), (3, 2), (4, 3))):
            n_rep = target[2]
    elif out is not None and len(out) == 5 and isinstance(out[2], int):
        if all(out[i] == dims[j] for i, j in ((0, 0), (1, 1), (3, 2), (4, 3))):
            n_rep = out[2]
    if n_rep is None:
        return t, 1
    new = shape_value(reshape.inputs[1])
    zero_copies = not reshape.attrs.get("allowzero", 0)
    want = [dims[0], dims[1] * n_rep, dims[2], dims[3]]
    if new is None:
        # A target built with arithmetic (past + new length): trust the exporter's inferred shape.
        return (src, n_rep) if _sym_dims(t) == want and t.shape is not None and None not in t.shape else (t, 1)
    if len(new) != 4 or sum(d == -1 for d in new) > 1:
        return t, 1
    for i, (got, exp) in enumerate(zip(new, want)):
        if got == exp or got == -1 or (got == 0 and zero_copies and i != 1):
            continue
        return t, 1
    if new[1] == -1 and not all(new[i] == want[i] for i in (0, 2, 3)):
        return t, 1
    return src, n_rep


def _native(node: gs.Node, graph: gs.Graph, ctx: PassContext) -> dict:
    """An exporter's own Attention: give it un-expanded K/V (native GQA), note TensorRT limits."""
    detail: dict = {"native": True}
    q, k, v = node.inputs[:3]
    if rank(q) == 4:
        k_src, k_rep = _repeat_kv_source(k)
        v_src, v_rep = _repeat_kv_source(v)
        if k_rep > 1 and k_rep == v_rep:
            node.inputs[1], node.inputs[2] = k_src, v_src
            nq, nkv = q.shape[1], k_src.shape[1]
            if isinstance(nq, int) and isinstance(nkv, int):
                node.attrs["q_num_heads"], node.attrs["kv_num_heads"] = nq, nkv
            detail["gqa_unexpanded"] = True
    problems = []
    if any(t.name for t in node.inputs[4:6]):
        problems.append("past_key/past_value inputs")
    if any(t.outputs or t in graph.outputs for t in node.outputs[1:]):
        problems.append("more than one output")
    if node.attrs.get("softcap", 0.0):
        problems.append("softcap")
    if node.attrs.get("is_causal", 0) and len(node.inputs) > 3 and node.inputs[3].name:
        problems.append("a mask together with is_causal")
    if problems:
        ctx.warn(f"fuse_attention: Attention {node.name!r} has {', '.join(problems)}, which TensorRT's "
                 "ONNX parser rejects")
        detail["tensorrt_problems"] = problems
    detail.update({k: node.attrs.get(k) for k in ("q_num_heads", "kv_num_heads", "scale", "is_causal")})
    return detail
