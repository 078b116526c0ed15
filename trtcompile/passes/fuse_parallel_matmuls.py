"""MatMuls that read the same activation with constant weights -> one MatMul over the joined weights.

A decoder layer reads its normalized hidden state three times for Q, K and V and twice for the MLP's
gate and up projections. At decode (one token per row) each MatMul is a matrix-vector product over
its weights, and ONNX Runtime on CPU pays a fixed cost per MatMul (thread-pool dispatch, a pass
over the activation, a small output); one MatMul over the joined weights streams the same bytes in
fewer, longer runs (SmolLM2 at context 16, decode steps of both graphs alternated on the shared
machine: about a fifth less CPU per step on one thread; on two threads within that run's noise).
TensorRT fuses such MatMuls itself, so for it the graph only changes shape.

```
  x ── MatMul(Wq) ── q          x ── MatMul([Wq | Wk | Wv]) ── Split(nq, nk, nv, axis -1) ── q
  x ── MatMul(Wk) ── k    =>                                                            ├── k
  x ── MatMul(Wv) ── v                                                                  └── v
```

Only float weights held as constants in the graph, 2-D, of one dtype and row count (weights behind
a DequantizeLinear are left as they are). It runs at the end of PIPELINE, after fuse_attention has
matched the projections it needs, and before precision and quantization: FP16 conversion and
INT8/FP8/INT4 quantization see one [K, Nq+Nk+Nv] weight, whose input activation the three shared
anyway (INT4's MatMulNBits then runs one kernel); `--exclude-node` names the joined MatMul
(`<first projection>_joined`).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.graph.context import PassContext


def _weight(node: gs.Node) -> gs.Constant | None:
    """The node's 2-D float weight, judged from its shape and type alone: a weight on disk
    (lazy_weights) is not read here."""
    w = node.inputs[1] if len(node.inputs) == 2 else None
    if not isinstance(w, gs.Constant) or w.shape is None or len(w.shape) != 2:
        return None
    return w if np.dtype(w.dtype).kind == "f" else None


def _values(w: gs.Constant) -> np.ndarray:
    # Read a lazy weight without caching it on the constant: the original goes away with its node,
    # and only one group's weights are in memory at a time.
    return np.asarray(w._values.load() if isinstance(w._values, gs.ir.tensor.LazyValues) else w.values)


def fuse_parallel_matmuls(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    from trtcompile.lazy_weights import graph_weights_dir, spill_one

    directory = graph_weights_dir(graph)
    groups: dict[str, list[gs.Node]] = {}
    for node in graph.nodes:
        if node.op == "MatMul" and _weight(node) is not None and node.inputs[0].name:
            groups.setdefault(node.inputs[0].name, []).append(node)
    for nodes in groups.values():
        if len(nodes) < 2:
            continue
        weights = [_values(_weight(n)) for n in nodes]
        if len({(w.dtype, w.shape[0]) for w in weights}) != 1:
            ctx.report.decline(nodes[0].name, "the weights differ in dtype or rows",
                               weights=[f"{w.dtype} {list(w.shape)}" for w in weights])
            continue
        first = nodes[0]
        widths = np.array([w.shape[1] for w in weights], np.int64)
        joined = gs.Constant(f"{first.name}_joined_weight", np.ascontiguousarray(np.concatenate(weights, axis=1)))
        del weights  # the originals go with their nodes below
        if directory is not None:  # on disk at once, like the weights it replaces
            spill_one(joined, directory)
        fused = gs.Variable(f"{first.name}_joined", dtype=first.outputs[0].dtype)
        outputs = []
        for node in nodes:
            outputs.append(node.outputs[0])
            node.outputs.clear()  # unhooked: cleanup drops the node and its weight
        graph.nodes.append(gs.Node("MatMul", name=f"{first.name}_joined", inputs=[first.inputs[0], joined],
                                   outputs=[fused]))
        graph.nodes.append(gs.Node("Split", name=f"{first.name}_split", attrs={"axis": -1},
                                   inputs=[fused, gs.Constant(f"{first.name}_split_widths", widths)],
                                   outputs=outputs))
        ctx.report.match(first.name, joined=[n.name for n in nodes], columns=int(widths.sum()))
    return graph

