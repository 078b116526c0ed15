"""Decomposed RMS norm -> ONNX `RMSNormalization` (opset 23).

Llama, Mistral, Qwen, T5 and Gemma write RMSNorm by hand (`x * rsqrt(mean(x^2) + eps) * w`,
upcast to fp32 and back), so every exporter except dynamo at opset 23 (whose onnxscript rewriter
fuses it) leaves seven to nine nodes per norm, two norms per layer. TensorRT >= 10.15 imports
RMSNormalization as one normalization layer that accumulates in fp32 (stash_type=1), which is also
what the fp16 decomposition needs to avoid overflowing x^2.

```
  x ─[Cast f32]─ x0 ─┬─ Pow(2) ── ReduceMean(-1) ── Add(eps) ── Sqrt ── Reciprocal ─┐  (dynamo)
                     │                                            └─── Div(1, ·) ───┤  (legacy)
                     └───────────────────────────────────────────────────────── Mul ┘
                                                                                 │
                                           y ◀── Mul(weight) ◀── [Cast back] ◀───┘
  =>  y = RMSNormalization(x, weight, axis=-1, epsilon=eps, stash_type=1)
```
Runs after fuse_layer_norm: the inner half of a layer norm is an RMS norm of x - mean(x), and is
declined here with that reason if the layer norm itself was not fused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.passes._match import producer
from trtcompile.passes._norm import claim, match_affine, match_normalize, squared_input
from trtcompile.graph.context import PassContext
from trtcompile.passes.fusion import Decline, run_fusion

OPSET = 23


def _candidates(graph: gs.Graph) -> list[gs.Node]:
    """ReduceMean nodes over a square: mean(x^2)."""
    return [n for n in graph.nodes if n.op == "ReduceMean" and n.outputs and squared_input(n)[0] is not None]


@dataclass
class RmsNormMatch:
    x: gs.Tensor  # the normalized input (before any fp16->fp32 Cast the norm made)
    nodes: list[gs.Node]
    epsilon: float
    scale: np.ndarray  # [hidden]
    output: gs.Tensor


def _match(graph: gs.Graph, reduce: gs.Node) -> RmsNormMatch:
    _, x0 = squared_input(reduce)
    sub = producer(x0, "Sub")
    if sub is not None and producer(sub.inputs[1], "ReduceMean") is not None:
        raise Decline("variance of a layer norm (x - mean(x)), not an RMS norm")
    norm = match_normalize(reduce)
    if isinstance(norm, str):
        raise Decline(norm)
    affine = match_affine(norm.normalized, with_bias=False)
    claimed = claim(graph, x0, affine, norm.nodes + affine.nodes, "RMS norm")
    if isinstance(claimed, str):
        raise Decline(claimed)
    x, nodes, dtype = claimed
    shape = getattr(x0, "shape", None)
    hidden = shape[-1] if shape and isinstance(shape[-1], int) and shape[-1] > 0 else None
    scale = affine.scale
    if scale is None:
        if hidden is None or dtype is None:
            raise Decline("no weight, and the hidden size or dtype is unknown")
        scale = np.ones(hidden, dtype=dtype)
    elif scale.size == 1 and hidden is not None:
        scale = np.full(hidden, scale.reshape(()), dtype=scale.dtype)
    elif hidden is not None and scale.size != hidden:
        raise Decline(f"weight has {scale.size} elements, hidden size is {hidden}")
    return RmsNormMatch(x, nodes, norm.epsilon, scale, affine.output)


def _rewrite(graph: gs.Graph, reduce: gs.Node, m: RmsNormMatch) -> tuple[str, dict]:
    name = reduce.name or m.output.name
    fused = gs.Node(
        "RMSNormalization", name=f"{name}/RMSNormalization",
        attrs={"axis": -1, "epsilon": float(m.epsilon), "stash_type": 1},
        inputs=[m.x, gs.Constant(f"{name}/rms_scale", m.scale)],
        outputs=[m.output],
    )
    graph.nodes.append(fused)
    return fused.name, {"epsilon": float(m.epsilon), "hidden": int(m.scale.size), "dtype": str(m.scale.dtype)}


def fuse_rms_norm(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    graph = run_fusion(graph, ctx, opset=OPSET, candidates=_candidates, match=_match, rewrite=_rewrite)
    _check_coverage(graph, ctx)
    return graph


def _check_coverage(graph: gs.Graph, ctx: PassContext) -> None:
    """Every transformer family here has two norms per layer; fewer fused ones is a shortfall the
    user should see (runs after fuse_layer_norm, so both kinds are counted)."""
    layers = ctx.model.num_layers
    if not layers:
        return
    norms = sum(1 for n in graph.nodes if n.op in ("LayerNormalization", "RMSNormalization"))
    if norms < 2 * layers:
        ctx.warn(f"fuse_rms_norm: {norms} LayerNormalization/RMSNormalization ops for {layers} layers "
                 f"(expected at least {2 * layers}); the rest stay decomposed, see the declined list")
        ctx.report.note(f"coverage shortfall: {norms} norms for {layers} layers")
