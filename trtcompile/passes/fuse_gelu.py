"""Decomposed GELU -> ONNX `Gelu` (opset 20), erf and tanh forms.

Below opset 20 every exporter spells GELU out (BERT/RoBERTa/ViT: erf; GPT-2's NewGELU and
`gelu_pytorch_tanh`: tanh, which the legacy exporter never fuses at any opset). Five to eight
elementwise kernels become one, which TensorRT fuses into the preceding MatMul's epilogue.

```
  erf:   x ── Div(√2) | Mul(1/√2) ── Erf ── Add(1) ──┐
         x ──────────────────────────────────────────┴── Mul ── Mul(0.5) ── y
  tanh:  x ── Pow(3) | x·(x·x) ── Mul(0.044715) ── Add(x, ·) ── Mul(√(2/π)) ── Tanh ── Add(1) ──┐
         x ── Mul(0.5) ─────────────────────────────────────────────────────────────┴── Mul ── y
  =>  y = Gelu(x, approximate="none" | "tanh")
```
The final product is matched in any order: (x·(1+e))·0.5, x·(0.5·(1+e)) or (0.5·x)·(1+e).
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import onnx_graphsurgeon as gs

from trtcompile.passes._match import escapes, is_scalar, other_input, producer, single_consumer, split_const
from trtcompile.graph.context import PassContext
from trtcompile.passes.fusion import Decline, run_fusion

OPSET = 20
_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _erf_input(erf: gs.Node):
    """x when Erf reads x/√2 (Div by √2 or Mul by 1/√2), plus that node."""
    node = producer(erf.inputs[0], "Div", "Mul")
    if node is None:
        return None, None
    if node.op == "Div" and is_scalar(node.inputs[1], _SQRT2):
        return node.inputs[0], node
    if node.op == "Mul":
        const, x = split_const(node)
        if const is not None and is_scalar(const, 1.0 / _SQRT2):
            return x, node
    return None, None


def _tanh_input(tanh: gs.Node):
    """x when Tanh reads √(2/π)·(x + 0.044715·x³), plus those nodes."""
    scale = producer(tanh.inputs[0], "Mul")
    if scale is None:
        return None, []
    const, inner = split_const(scale)
    if const is None or not is_scalar(const, _SQRT_2_OVER_PI):
        return None, []
    add = producer(inner, "Add")
    if add is None:
        return None, []
    for x, cubic in ((add.inputs[0], add.inputs[1]), (add.inputs[1], add.inputs[0])):
        mul = producer(cubic, "Mul")
        if mul is None:
            continue
        coef, cube = split_const(mul)
        if coef is None or not is_scalar(coef, 0.044715):
            continue
        cube_nodes = _cube_of(x, cube)
        if cube_nodes:
            return x, cube_nodes + [mul, add, scale]
    return None, []


def _cube_of(x: gs.Tensor, cube: gs.Tensor) -> list[gs.Node]:
    """The nodes computing x³ as Pow(x, 3) or x·(x·x) (how the legacy exporter writes Gemma's)."""
    pow_ = producer(cube, "Pow")
    if pow_ is not None and pow_.inputs[0] is x and is_scalar(pow_.inputs[1], 3.0):
        return [pow_]
    outer = producer(cube, "Mul")
    if outer is None or len(outer.inputs) != 2:
        return []
    for a, b in ((outer.inputs[0], outer.inputs[1]), (outer.inputs[1], outer.inputs[0])):
        square = producer(b, "Mul")
        if a is x and square is not None and len(square.inputs) == 2 and square.inputs[0] is x \
                and square.inputs[1] is x:
            return [square, outer]
    return []


@dataclass
class GeluMatch:
    x: gs.Tensor
    nodes: list[gs.Node]
    output: gs.Tensor
    approximate: str  # "none" (erf) or "tanh"


def _product(x: gs.Tensor, one_plus: gs.Tensor):
    """Match 0.5 · x · one_plus in any association: (nodes, output), or Decline."""
    mul = single_consumer(one_plus, "Mul")
    if mul is None:
        raise Decline("1 + erf/tanh is not multiplied (alone) by anything")
    other = other_input(mul, one_plus)
    if other is x:                                  # (x · (1+e)) · 0.5
        half = single_consumer(mul.outputs[0], "Mul")
        if half is not None and is_scalar(split_const(half)[0], 0.5):
            return [mul, half], half.outputs[0]
        raise Decline("x·(1 + erf/tanh) is not multiplied by 0.5")
    if is_scalar(other, 0.5):                       # x · (0.5 · (1+e))
        outer = single_consumer(mul.outputs[0], "Mul")
        if outer is not None and other_input(outer, mul.outputs[0]) is x:
            return [mul, outer], outer.outputs[0]
        raise Decline("0.5·(1 + erf/tanh) is not multiplied by x")
    half = producer(other, "Mul")                   # (0.5 · x) · (1+e)
    if half is not None:
        const, y = split_const(half)
        if const is not None and is_scalar(const, 0.5) and y is x:
            nodes = [mul] + ([half] if len(half.outputs[0].outputs) == 1 else [])
            return nodes, mul.outputs[0]
    raise Decline("1 + erf/tanh is multiplied by something other than x and 0.5")


def _match(graph: gs.Graph, node: gs.Node) -> GeluMatch:
    if node.op == "Erf":
        x, first = _erf_input(node)
        if x is None:
            raise Decline("Erf input is not x/√2")
        head, approximate = [first], "none"
    else:
        x, head = _tanh_input(node)
        if x is None:
            raise Decline("Tanh input is not √(2/π)·(x + 0.044715·x³)")
        approximate = "tanh"
    add = single_consumer(node.outputs[0], "Add")
    if add is None or not is_scalar(split_const(add)[0], 1.0):
        raise Decline(f"{node.op} is not followed by Add(1) alone")
    tail, output = _product(x, add.outputs[0])
    nodes = head + [node, add] + tail
    leak = escapes(graph, nodes, output)
    if leak is not None:
        raise Decline(f"intermediate {leak.name!r} is used outside the GELU")
    return GeluMatch(x, nodes, output, approximate)


def _candidates(graph: gs.Graph) -> list[gs.Node]:
    """Every Erf; a Tanh only when it reads Mul(const) and feeds Add (Tanh alone is no GELU)."""
    found = []
    for node in graph.nodes:
        if node.op == "Erf":
            found.append(node)
        elif node.op == "Tanh" and producer(node.inputs[0], "Mul") is not None \
                and any(c.op == "Add" for c in node.outputs[0].outputs):
            found.append(node)
    return found


def _rewrite(graph: gs.Graph, anchor: gs.Node, m: GeluMatch) -> tuple[str, dict]:
    fused = gs.Node("Gelu", name=f"{anchor.name or m.output.name}/Gelu", attrs={"approximate": m.approximate},
                    inputs=[m.x], outputs=[m.output])
    graph.nodes.append(fused)
    return fused.name, {"approximate": m.approximate}


def fuse_gelu(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    return run_fusion(graph, ctx, opset=OPSET, candidates=_candidates, match=_match, rewrite=_rewrite)
