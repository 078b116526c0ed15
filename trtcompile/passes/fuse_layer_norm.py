"""Decomposed layer norm -> ONNX `LayerNormalization` (opset 17).

The exporters emit LayerNormalization themselves at opset >= 17, but the legacy exporter below
17, older tools and hand-written norms (`(x - x.mean(-1)) / sqrt(var + eps)`) leave it spread over
nine nodes, which TensorRT runs as nine kernels in fp32 and, in fp16, with a variance that can
overflow. The fused op keeps fp32 accumulation (stash_type=1) whatever the input precision.

```
  x ─[Cast f32]─┬─ ReduceMean(-1) ─┐
                └──────────────── Sub ── d ─┬─ Pow(2) ── ReduceMean(-1) ── Add(eps) ── Sqrt ─┐
                                            └─────────────────────────── Div ◀──────────────┘
                                                                          │
                              y ◀── Add(bias) ◀── Mul(scale) ◀── [Cast back] ◀┘
  =>  y = LayerNormalization(x, scale, bias, axis=-1, epsilon=eps, stash_type=1)
```
(Mul(d, Reciprocal(Sqrt)) and Mul(d, d) spellings match too.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.passes._match import axis_is_last, rank, reduce_axes, single_consumer
from trtcompile.passes._norm import claim, match_affine, match_normalize, squared_input
from trtcompile.graph.context import PassContext
from trtcompile.passes.fusion import Decline, run_fusion

OPSET = 17


def _candidates(graph: gs.Graph) -> list[gs.Node]:
    """ReduceMean nodes whose output is subtracted from their own input: x - mean(x)."""
    found = []
    for node in graph.nodes:
        if node.op != "ReduceMean" or not node.outputs:
            continue
        x = node.inputs[0]
        if any(c.op == "Sub" and c.inputs[0] is x and c.inputs[1] is node.outputs[0] for c in node.outputs[0].outputs):
            found.append(node)
    return found


@dataclass
class LayerNormMatch:
    x: gs.Tensor  # the normalized input (before any fp16->fp32 Cast the norm made)
    nodes: list[gs.Node]
    epsilon: float
    scale: np.ndarray  # [hidden]
    bias: np.ndarray  # [hidden]
    output: gs.Tensor


def _match(graph: gs.Graph, mean: gs.Node) -> LayerNormMatch:
    x0 = mean.inputs[0]
    if not axis_is_last(reduce_axes(mean), rank(x0)):
        raise Decline(f"mean over axes {reduce_axes(mean)}, not only the last axis")
    sub = single_consumer(mean.outputs[0], "Sub")
    if sub is None:
        raise Decline("mean is used outside x - mean")
    d = sub.outputs[0]
    variance = None
    for consumer in d.outputs:
        for nxt in consumer.outputs[0].outputs if consumer.outputs else []:
            if nxt.op == "ReduceMean" and squared_input(nxt)[1] is d:
                variance = nxt
    if variance is None:
        raise Decline("x - mean is not squared and averaged (no variance)")
    norm = match_normalize(variance)
    if isinstance(norm, str):
        raise Decline(norm)
    affine = match_affine(norm.normalized, with_bias=True)
    claimed = claim(graph, x0, affine, [mean, sub] + norm.nodes + affine.nodes, "layer norm")
    if isinstance(claimed, str):
        raise Decline(claimed)
    x, nodes, dtype = claimed
    hidden = _hidden_size(x0, affine)
    if hidden is None:
        raise Decline("hidden size unknown (no shape, no scale/bias constant)")
    if dtype is None and affine.scale is None:
        raise Decline("dtype of the input unknown and no scale constant to tell it")
    dtype = dtype if dtype is not None else affine.scale.dtype
    scale = _broadcast(affine.scale, hidden, dtype, 1.0)
    bias = _broadcast(affine.bias, hidden, dtype, 0.0)
    if scale is None or bias is None:
        raise Decline("scale/bias length does not match the hidden size")
    return LayerNormMatch(x, nodes, norm.epsilon, scale, bias, affine.output)


def _hidden_size(x0: gs.Tensor, affine) -> int | None:
    shape = getattr(x0, "shape", None)
    if shape and isinstance(shape[-1], int) and shape[-1] > 0:
        return shape[-1]
    for vec in (affine.scale, affine.bias):
        if vec is not None and vec.size > 1:
            return int(vec.size)
    return None


def _broadcast(vec, hidden: int, dtype, fill: float):
    if vec is None:
        return np.full(hidden, fill, dtype=dtype)
    if vec.size == 1:
        return np.full(hidden, vec.reshape(()), dtype=vec.dtype)
    return vec if vec.size == hidden else None


def _rewrite(graph: gs.Graph, mean: gs.Node, m: LayerNormMatch) -> tuple[str, dict]:
    name = mean.name or m.output.name
    fused = gs.Node(
        "LayerNormalization", name=f"{name}/LayerNormalization",
        attrs={"axis": -1, "epsilon": float(m.epsilon), "stash_type": 1},
        inputs=[m.x, gs.Constant(f"{name}/ln_scale", m.scale), gs.Constant(f"{name}/ln_bias", m.bias)],
        outputs=[m.output],
    )
    graph.nodes.append(fused)
    return fused.name, {"epsilon": float(m.epsilon), "hidden": int(m.scale.size), "dtype": str(m.scale.dtype)}


def fuse_layer_norm(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    return run_fusion(graph, ctx, opset=OPSET, candidates=_candidates, match=_match, rewrite=_rewrite)
