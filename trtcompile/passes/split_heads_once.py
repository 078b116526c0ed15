"""Joined Q/K/V projection -> one Reshape and one Transpose into heads, then a Split along the heads.

After fuse_parallel_matmuls, a decoder layer's Q, K and V come out of one MatMul and a Split on the
last axis, and each is then cut into heads and moved head-major on its own:

```
  MatMul ── Split(nq, nk, nv, axis -1) ── Reshape([b, s, -1, d]) ── Transpose(0 2 1 3) ── q
                                      ├── Reshape([b, s, -1, d]) ── Transpose(0 2 1 3) ── k
                                      └── Reshape([b, s, -1, d]) ── Transpose(0 2 1 3) ── v
  =>
  MatMul ── Reshape([b, s, -1, d]) ── Transpose(0 2 1 3) ── Split(nq/d, nk/d, nv/d, axis 1) ── q, k, v
```

Seven nodes become three, per layer. The values are the same (every head is the same d columns,
moved the same way), so this is exact. It matters on ONNX Runtime's CPU, where a decode step of a
small LLM is a thousand kernels and each costs a few microseconds of its own whatever its size
(`trtcompile bench decode` counts them: SmolLM2 944 a step against ONNX Runtime GenAI's 309);
TensorRT fuses such shuffles anyway, and Split along an axis imports as slices.

Matches only when every output of the Split goes to exactly one such Reshape -> Transpose chain,
all Reshapes share one shape tensor whose last value is the head size `d` and whose third value is
-1 (the exporters' `[batch, sequence, -1, head_dim]`), and every width is a multiple of `d`.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.graph.context import PassContext
from trtcompile.passes._match import const_value, producer

HEAD_MAJOR = [0, 2, 1, 3]


def _head_size(shape: gs.Tensor) -> int | None:
    """d when `shape` is [?, ?, -1, d] (a constant, or the exporters' Concat of dims and constants)."""
    value = const_value(shape)
    if value is not None:
        value = value.reshape(-1)
        return int(value[3]) if value.size == 4 and int(value[2]) == -1 and int(value[3]) > 0 else None
    concat = producer(shape, "Concat")
    if concat is None or concat.attrs.get("axis", 0) != 0:
        return None
    # The last two values are constants ([-1, d] or [-1] [d]); what comes before is the dims.
    tail: list[int] = []
    for part in reversed(concat.inputs):
        value = const_value(part)
        if value is None or len(tail) >= 2:
            break
        tail = [int(v) for v in value.reshape(-1)] + tail
    values = tail[-2:]
    if len(values) != 2 or values[0] != -1 or values[1] <= 0:
        return None
    return int(values[1])


def _chain(split: gs.Node, graph_outputs: set[str]) -> list[tuple[gs.Node, gs.Node]] | None:
    """[(reshape, transpose)] per Split output when each output goes through one Reshape and one
    head-major Transpose and nowhere else, else None (an MLP's gate/up Split, say)."""
    chains = []
    for out in split.outputs:
        if len(out.outputs) != 1 or out.outputs[0].op != "Reshape" or out.name in graph_outputs:
            return None
        reshape = out.outputs[0]
        moved = reshape.outputs[0]
        if len(moved.outputs) != 1 or moved.name in graph_outputs or moved.outputs[0].op != "Transpose" \
                or list(moved.outputs[0].attrs.get("perm", [])) != HEAD_MAJOR:
            return None
        chains.append((reshape, moved.outputs[0]))
    return chains


def split_heads_once(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    outputs = {t.name for t in graph.outputs}
    for split in [n for n in graph.nodes if n.op == "Split"]:
        joined = split.inputs[0]
        rank = len(joined.shape) if joined.shape is not None else None
        if split.attrs.get("axis") not in (-1, *((rank - 1,) if rank else ())) or len(split.inputs) < 2:
            continue  # the heads are the last axis of the joined projection
        widths = const_value(split.inputs[1])
        if widths is None or widths.size != len(split.outputs):
            continue
        chains = _chain(split, outputs)
        if chains is None:
            continue  # not a head split: nothing to say
        reshapes = [r for r, _ in chains]
        shape = reshapes[0].inputs[1]
        if any(r.inputs[1] is not shape for r in reshapes) or len({r.attrs.get("allowzero", 0) for r in reshapes}) != 1:
            ctx.report.decline(split.name, "the Reshapes into heads differ")
            continue
        d = _head_size(shape)
        if d is None or any(int(w) % d for w in widths.reshape(-1)):
            ctx.report.decline(split.name, f"no head size d with [b, s, -1, d] dividing widths {widths.tolist()}",
                               head_size=d)
            continue
        heads = gs.Variable(f"{split.name}_heads", dtype=joined.dtype)
        head_major = gs.Variable(f"{split.name}_head_major", dtype=joined.dtype)
        results = [t.outputs[0] for _, t in chains]
        for reshape, transpose in chains:
            reshape.outputs.clear()
            transpose.outputs.clear()
        split.outputs.clear()
        graph.nodes.append(gs.Node("Reshape", name=f"{split.name}_to_heads", attrs=dict(reshapes[0].attrs),
                                   inputs=[joined, shape], outputs=[heads]))
        graph.nodes.append(gs.Node("Transpose", name=f"{split.name}_head_major", attrs={"perm": HEAD_MAJOR},
                                   inputs=[heads], outputs=[head_major]))
        counts = (widths.reshape(-1).astype(np.int64) // d)
        graph.nodes.append(gs.Node("Split", name=f"{split.name}_heads_split", attrs={"axis": 1},
                                   inputs=[head_major, gs.Constant(f"{split.name}_head_counts", counts)],
                                   outputs=results))
        ctx.report.match(split.name, heads=counts.tolist(), head_size=d)
    return graph
