"""The piece LayerNorm and RMSNorm decompositions share: dividing by sqrt(mean(d^2) + eps).

```
  d ──┬── Pow(2) | Mul(d,d) ── ReduceMean(last axis) ── Add(eps) ── Sqrt ──┐
      │                                                                    │
      └──────────────── Div(d, ·)  |  Mul(d, Reciprocal(·))  |  Mul(d, Div(1, ·)) ── normalized
```
then the affine tail: [Cast] ── [Mul(scale)] ── [Add(bias)].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.passes._match import (axis_is_last, const_value, is_scalar, other_input, rank, reduce_axes,
                                      scalar, single_consumer, split_const)


@dataclass
class Normalize:
    nodes: list[gs.Node]
    epsilon: float
    normalized: gs.Tensor


@dataclass
class Affine:
    nodes: list[gs.Node] = field(default_factory=list)
    cast_to: int | None = None
    scale: np.ndarray | None = None
    bias: np.ndarray | None = None
    output: gs.Tensor | None = None


def squared_input(reduce: gs.Node) -> tuple[gs.Node | None, gs.Tensor | None]:
    """(the Pow/Mul node, d) when the ReduceMean reads d^2, else (None, None)."""
    sq = reduce.inputs[0].inputs[0] if reduce.inputs[0].inputs else None
    if sq is None:
        return None, None
    if sq.op == "Pow" and is_scalar(sq.inputs[1], 2.0) and const_value(sq.inputs[0]) is None:
        return sq, sq.inputs[0]
    if sq.op == "Mul" and len(sq.inputs) == 2 and sq.inputs[0] is sq.inputs[1]:
        return sq, sq.inputs[0]
    return None, None


def match_normalize(reduce: gs.Node) -> Normalize | str:
    """Match from the variance ReduceMean down to `d / sqrt(var + eps)`; a reason string if not."""
    sq, d = squared_input(reduce)
    if sq is None:
        return "ReduceMean input is not x^2 (Pow 2 or Mul(x, x))"
    if not axis_is_last(reduce_axes(reduce), rank(d)):
        return f"reduces over axes {reduce_axes(reduce)}, not only the last axis"
    if int(reduce.attrs.get("keepdims", 1)) != 1:
        return "ReduceMean has keepdims=0"
    add = single_consumer(reduce.outputs[0], "Add")
    if add is None:
        return "mean of squares is not followed by Add(epsilon) alone"
    eps_t, _ = split_const(add)
    eps = scalar(eps_t) if eps_t is not None else None
    if eps is None:
        return "Add after the mean of squares is not a scalar epsilon"
    sqrt = single_consumer(add.outputs[0], "Sqrt")
    if sqrt is None:
        return "epsilon Add is not followed by Sqrt alone"
    nxt = single_consumer(sqrt.outputs[0])
    if nxt is None:
        return "Sqrt output has several consumers"
    if nxt.op == "Div" and nxt.inputs[0] is d and nxt.inputs[1] is sqrt.outputs[0]:
        return Normalize([sq, reduce, add, sqrt, nxt], eps, nxt.outputs[0])
    inverse = None
    if nxt.op == "Reciprocal":
        inverse = nxt
    elif nxt.op == "Div" and nxt.inputs[1] is sqrt.outputs[0] and is_scalar(nxt.inputs[0], 1.0):
        inverse = nxt
    if inverse is None:
        return f"Sqrt feeds {nxt.op}, not Div/Reciprocal"
    mul = single_consumer(inverse.outputs[0], "Mul")
    if mul is None or other_input(mul, inverse.outputs[0]) is not d:
        return "1/sqrt(var + eps) does not multiply the same tensor that was squared"
    return Normalize([sq, reduce, add, sqrt, inverse, mul], eps, mul.outputs[0])


def match_affine(normalized: gs.Tensor, with_bias: bool) -> Affine:
    """The optional tail after normalization: [Cast] -> [Mul(const scale)] -> [Add(const bias)]."""
    out = Affine(output=normalized)
    cast = single_consumer(out.output, "Cast")
    if cast is not None:
        out.nodes.append(cast)
        out.cast_to = int(cast.attrs["to"])
        out.output = cast.outputs[0]
    mul = single_consumer(out.output, "Mul")
    if mul is not None:
        const, _ = split_const(mul)
        value = const_value(const) if const is not None else None
        if value is not None and _last_axis_vector(value) is not None:
            out.nodes.append(mul)
            out.scale = _last_axis_vector(value)
            out.output = mul.outputs[0]
    if with_bias and out.scale is not None:
        add = single_consumer(out.output, "Add")
        if add is not None:
            const, _ = split_const(add)
            value = const_value(const) if const is not None else None
            if value is not None and _last_axis_vector(value) is not None:
                out.nodes.append(add)
                out.bias = _last_axis_vector(value)
                out.output = add.outputs[0]
    return out


def _last_axis_vector(value: np.ndarray) -> np.ndarray | None:
    """A constant that varies only along the last axis, as a 1-D array (None if it is not one)."""
    if value.ndim == 0:
        return value.reshape(1)
    if all(s == 1 for s in value.shape[:-1]):
        return value.reshape(-1)
    return None


def np_dtype(onnx_type: int):
    from onnx.helper import tensor_dtype_to_np_dtype

    return np.dtype(tensor_dtype_to_np_dtype(onnx_type))


def tensor_dtype(tensor: gs.Tensor):
    dtype = getattr(tensor, "dtype", None)
    if dtype is None:
        return None
    try:
        return np.dtype(dtype)
    except TypeError:
        return None


def resolve_input(x0: gs.Tensor, affine: Affine) -> tuple[gs.Tensor, list[gs.Node], object] | str:
    """Pick the fused op's input X so that its output dtype equals the subgraph's.

    HF norms upcast to fp32 and cast back (`x.float() ... .to(dtype)`): the fused op with
    stash_type=1 does the same inside, so both Casts go and X is the original tensor.
    Returns (X, Cast nodes to drop, numpy dtype of X or None) or a reason string.
    """
    from trtcompile.passes._match import producer

    up = producer(x0, "Cast")
    if affine.cast_to is None:
        return x0, [], tensor_dtype(x0)
    target = np_dtype(affine.cast_to)
    if up is not None and tensor_dtype(up.inputs[0]) == target:
        return up.inputs[0], [up], target
    if tensor_dtype(x0) == target or (up is not None and np_dtype(int(up.attrs["to"])) == target):
        return x0, [], target
    return f"normalization is computed in {tensor_dtype(x0)} and cast to {target}: dtype of the input unknown"


def claim(graph: gs.Graph, x0: gs.Tensor, affine: Affine, body: list[gs.Node],
          what: str) -> tuple[gs.Tensor, list[gs.Node], object] | str:
    """The norm's real input (past fp16<->fp32 Casts), every node the fused op replaces, and the
    input dtype; or why the subgraph cannot be taken (an intermediate is read elsewhere)."""
    from trtcompile.passes._match import escapes

    picked = resolve_input(x0, affine)
    if isinstance(picked, str):
        return picked
    x, casts, dtype = picked
    # A Cast belongs to the norm only when nothing outside the norm reads it.
    nodes = [c for c in casts if all(any(n is b for b in body) for n in c.outputs[0].outputs)] + body
    leak = escapes(graph, nodes, affine.output)
    if leak is not None:
        return f"intermediate {leak.name!r} is used outside the {what}"
    return x, nodes, dtype
