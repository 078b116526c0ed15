"""Small helpers the norm/rotary/GELU matchers share: walk producers, read constants, check that a
matched subgraph's intermediates are used nowhere else.

Deliberately functions, not a matcher class: each pass reads top to bottom.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

def producer(tensor: gs.Tensor, *ops: str) -> gs.Node | None:
    """The node producing `tensor`, if there is one and (when ops are given) its op is one of them."""
    if tensor is None or isinstance(tensor, gs.Constant) or not tensor.inputs:
        return None
    node = tensor.inputs[0]
    return node if not ops or node.op in ops else None


def const_value(tensor: gs.Tensor) -> np.ndarray | None:
    """Value of an initializer or of a `Constant` node's output (through Identity/Cast), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    node = producer(tensor)
    if node is None:
        return None
    if node.op == "Constant":
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        for key in ("value_float", "value_int"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        for key in ("value_floats", "value_ints"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        return None
    if node.op == "Identity":
        return const_value(node.inputs[0])
    if node.op == "Cast":
        inner = const_value(node.inputs[0])
        if inner is None:
            return None
        return inner.astype(onnx.helper.tensor_dtype_to_np_dtype(node.attrs["to"]))
    return None


def scalar(tensor: gs.Tensor) -> float | None:
    """A constant with exactly one element, as a float; None otherwise."""
    value = const_value(tensor)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def is_scalar(tensor: gs.Tensor, expected: float, rtol: float = 1e-4) -> bool:
    value = scalar(tensor)
    return value is not None and abs(value - expected) <= rtol * max(1.0, abs(expected))


def split_const(node: gs.Node) -> tuple[gs.Tensor | None, gs.Tensor | None]:
    """For a binary node, (the constant input, the other input); (None, None) if neither or both."""
    if len(node.inputs) != 2:
        return None, None
    a, b = node.inputs
    a_const, b_const = const_value(a) is not None, const_value(b) is not None
    if a_const and not b_const:
        return a, b
    if b_const and not a_const:
        return b, a
    return None, None


def other_input(node: gs.Node, tensor: gs.Tensor) -> gs.Tensor | None:
    """The input of a binary node that is not `tensor`."""
    if len(node.inputs) != 2:
        return None
    if node.inputs[0] is tensor:
        return node.inputs[1]
    if node.inputs[1] is tensor:
        return node.inputs[0]
    return None




def single_consumer(tensor: gs.Tensor, *ops: str) -> gs.Node | None:
    if len(tensor.outputs) != 1:
        return None
    node = tensor.outputs[0]
    return node if not ops or node.op in ops else None


def escapes(graph: gs.Graph, nodes: list[gs.Node], keep: gs.Tensor) -> gs.Tensor | None:
    """An intermediate of `nodes` that something outside them reads (or a graph output), else None.

    `keep` is the subgraph's final output, which may be read anywhere.
    """
    inside = {id(n) for n in nodes}
    outputs = {id(t) for t in graph.outputs}
    for node in nodes:
        for t in node.outputs:
            if t is keep:
                continue
            if id(t) in outputs or any(id(c) not in inside for c in t.outputs):
                return t
    return None






def axis_is_last(axes, rank: int | None) -> bool:
    """`axes` (list/array) names only the last axis (as -1 or rank-1 when the rank is known)."""
    if axes is None:
        return False
    axes = [int(a) for a in np.asarray(axes).ravel()]
    if len(axes) != 1:
        return False
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def reduce_axes(node: gs.Node) -> list[int] | None:
    """Axes of a Reduce* node, from the attribute (opset < 18) or the second input (>= 18)."""
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if len(node.inputs) > 1 and node.inputs[1] is not None and node.inputs[1].name:
        value = const_value(node.inputs[1])
        return None if value is None else [int(a) for a in value.ravel()]
    return None  # all axes


def rank(tensor: gs.Tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)
