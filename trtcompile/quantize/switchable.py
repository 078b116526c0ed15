"""One ONNX Runtime session in which each MatMul's Q/DQ is switched on or off per run, for the
accuracy gate.

The gate measures many subsets of quantized MatMuls (each layer alone, then bisection and a greedy
search). Building a graph and a session per subset costs seconds on a 135M-parameter LLM (the
graph's weights are copied and serialized each time), and the gate tries hundreds of subsets on
200+ MatMuls. Here the fully quantized graph is built once, and every quantized input of MatMul k
is chosen by a boolean input:

    x ──Q──DQ── x_q ──┐
    │                Where(gates[k], x_q, x) ── MatMul_k        (weights alike: DQ(W_q) or W)
    └─────────────────┘

`Where` selects the tensor itself, so a run with a given mask computes exactly what the graph with
only that subset quantized computes. This graph exists only for measuring; it is never packaged.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

GATES = "trtcompile_qdq_gates"


class SwitchableSession:
    """`run_all`-compatible: `session.run(names, feed)` with the mask set by `select(subset)`."""

    def __init__(self, fp32_graph: gs.Graph, targets, amax: dict, fmt, rounded=None):
        from trtcompile.graph.session import ort_session
        from trtcompile.onnx_io import to_model

        self.order = [t.node for t in targets]
        self.session = ort_session(to_model(_switchable_graph(fp32_graph, targets, amax, fmt, rounded)))
        self.mask = np.ones(len(self.order), bool)

    def select(self, subset) -> SwitchableSession:
        wanted = {t.node for t in subset}
        self.mask = np.array([name in wanted for name in self.order], bool)
        return self

    def get_outputs(self):
        return self.session.get_outputs()

    def run(self, names, feed):
        return self.session.run(names, {**feed, GATES: self.mask})


def _switchable_graph(graph: gs.Graph, targets, amax: dict, fmt, rounded=None) -> gs.Graph:
    """`graph` (consumed) with every target's Q/DQ, each MatMul input behind a Where on its gate."""
    from trtcompile.quantize.qdq import insert_qdq

    nodes = {n.name: n for n in graph.nodes}
    originals = {t.node: list(nodes[t.node].inputs) for t in targets}
    graph = insert_qdq(graph, targets, amax, fmt, rounded)
    _dequantize_weights_once(graph)
    nodes = {n.name: n for n in graph.nodes}
    gates = gs.Variable(GATES, dtype=np.bool_, shape=[len(targets)])
    graph.inputs.append(gates)
    for k, t in enumerate(targets):
        node = nodes[t.node]
        gate = gs.Variable(f"{GATES}_{k}", dtype=np.bool_, shape=[])
        graph.nodes.append(gs.Node("Gather", f"{GATES}_gather_{k}", {"axis": 0},
                                   inputs=[gates, gs.Constant(f"{GATES}_index_{k}", np.array(k, np.int64))],
                                   outputs=[gate]))
        for i, (before, now) in enumerate(zip(originals[t.node], list(node.inputs))):
            if before is now:
                continue
            chosen = gs.Variable(f"{now.name}_or_float_{k}_{i}", dtype=np.float32, shape=now.shape)
            graph.nodes.append(gs.Node("Where", f"{t.node}_switch_{i}", inputs=[gate, now, before],
                                       outputs=[chosen]))
            node.inputs[i] = chosen
    return graph.cleanup().toposort()


def _dequantize_weights_once(graph: gs.Graph) -> None:
    """Each weight's DequantizeLinear(constant) becomes its float result, computed here once:
    ONNX Runtime would dequantize every weight on every run (FP8 with reference kernels: about
    0.5 s per run on a 135M-parameter model). The values are the same: (q - 0) * scale, one
    float32 rounding, as the kernel computes it."""
    for node in [n for n in graph.nodes if n.op == "DequantizeLinear"]:
        q, scale = node.inputs[0], node.inputs[1]
        if not (isinstance(q, gs.Constant) and isinstance(scale, gs.Constant)):
            continue
        values = _constant_values(q).astype(np.float32)
        s = np.asarray(scale.values, np.float32)
        if s.ndim == 1:
            shape = [1] * values.ndim
            shape[node.attrs.get("axis", 1)] = -1
            s = s.reshape(shape)
        out = node.outputs[0]
        constant = gs.Constant(f"{out.name}_values", (values * s).astype(np.float32))
        for consumer in list(out.outputs):
            for i, t in enumerate(consumer.inputs):
                if t is out:
                    consumer.inputs[i] = constant
        node.outputs.clear()


def _constant_values(constant: gs.Constant) -> np.ndarray:
    """A constant's values, float8 included (written by blocks.packed_constant as an ONNX tensor
    onnx-graphsurgeon has no numpy type for)."""
    lazy = getattr(constant, "_values", None)
    if isinstance(lazy, gs.ir.tensor.LazyValues):
        from onnx import numpy_helper

        return numpy_helper.to_array(lazy.tensor)
    return np.asarray(constant.values)
