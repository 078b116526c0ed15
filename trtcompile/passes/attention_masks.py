"""Attention masks for fuse_attention: recognise them and build the one mask input `Attention` takes.

Recognised: additive masks (Add), bool masks (Where(cond, scores, -inf) or the inverted
Where(cond, -inf, scores)), masks that provably pass everything (dropped), and masks that are
provably exactly causal (Trilu of ones, a constant lower-triangular matrix, or an additive
Where built from one), which become `is_causal=1`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.passes._match import const_value, producer
from trtcompile.passes._match import scalar as scalar_value
from trtcompile.passes.patterns import NameScope, dims_equal

# A Where fill value at or below this is a mask (HF uses finfo.min, others -1e4, -1e9 or -inf).
MASK_FILL_MAX = -1e4


@dataclass
class Mask:
    tensor: gs.Tensor
    kind: str  # "additive" or "bool"
    inverted: bool = False  # bool mask that is True where masked (Where(cond, -inf, scores))
    factor: float = 1.0  # scale the graph applies after adding this mask ((QK^T + mask) * c)


def all_true(t: gs.Tensor, depth: int = 6) -> bool:
    value = const_value(t)
    if value is not None:
        return value.size > 0 and bool(np.all(value.astype(bool)))
    node = producer(t, "Expand", "Cast", "Reshape", "Unsqueeze", "Identity")
    return node is not None and depth > 0 and all_true(node.inputs[0], depth - 1)


def is_noop(mask: Mask) -> bool:
    """A mask that lets everything through: ViT's export adds Where(Expand(True), 0, -max)."""
    if mask.kind == "bool":
        return not mask.inverted and all_true(mask.tensor)
    value = const_value(mask.tensor)
    if value is not None:
        return bool(np.all(value == 0))
    node = producer(mask.tensor, "Where")
    return node is not None and all_true(node.inputs[0]) and scalar_value(node.inputs[1]) == 0


def ones(t: gs.Tensor) -> bool:
    value = const_value(t)
    if value is not None:
        return value.size > 0 and bool(np.all(value == 1))
    node = producer(t, "Expand", "ConstantOfShape", "Cast")
    if node is None:
        return False
    if node.op == "ConstantOfShape":
        fill = node.attrs.get("value")
        return fill is not None and bool(np.all(np.asarray(fill.values) == 1))
    return ones(node.inputs[0])


def lower_triangle(t: gs.Tensor, depth: int = 6) -> bool | None:
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
        if node.attrs.get("upper", 1) == 0 and ones(node.inputs[0]):
            return True
        return None
    if node.op in ("Cast", "Identity", "Unsqueeze", "Expand"):
        return lower_triangle(node.inputs[0], depth - 1)
    if node.op == "Not":
        inner = lower_triangle(node.inputs[0], depth - 1)
        return None if inner is None else not inner
    if node.op == "Equal":
        a, b = node.inputs
        c = scalar_value(b)
        inner = lower_triangle(a, depth - 1)
        if c is None or inner is None:
            return None
        return inner if c == 1 else (not inner) if c == 0 else None
    return None


def is_causal(mask: Mask) -> bool:
    """The mask is exactly causal (query i sees keys j <= i), provable from the graph."""
    if mask.kind == "bool":
        tri = lower_triangle(mask.tensor)
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
    tri = lower_triangle(cond)
    fx, fy = scalar_value(x), scalar_value(y)
    if tri is None or fx is None or fy is None:
        return False
    if fx == 0 and fy <= MASK_FILL_MAX:
        return tri
    if fy == 0 and fx <= MASK_FILL_MAX:
        return not tri
    return False


def mask_input(masks: list[Mask], dtype, add, names: NameScope, base: str) -> gs.Tensor:
    """One mask as it is (bool True = attend, or additive in Q's dtype); several summed as additive."""
    # A bool mask needs no scaling (a positive factor keeps masked entries at -inf).
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
        else:
            if t.dtype is not None and np.dtype(t.dtype) != np_dtype:
                t = add("Cast", [t], {"to": onnx_dtype(np_dtype)}, out_dtype=np_dtype, out_shape=t.shape,
                        hint="mask_cast")
            if mk.factor != 1.0:  # Attention adds the mask after scaling: scale it as the graph did
                c = gs.Constant(names(f"{base}/mask_scale"), np.array(mk.factor, np_dtype))
                t = add("Mul", [t, c], out_dtype=np_dtype, out_shape=t.shape, hint="mask_scaled")
        total = t if total is None else add("Add", [total, t], out_dtype=np_dtype, hint="mask_sum")
    return total


def expand_mask(mask: gs.Tensor, q: gs.Tensor, k: gs.Tensor, add, base: str) -> gs.Tensor:
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


def onnx_dtype(np_dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))
