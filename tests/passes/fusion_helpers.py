"""What every fusion test does: run one pass (with the graph check), compare ONNX Runtime before
and after, and build tiny graphs inline."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from helpers import assert_close, ort_run
from trtcompile.graph.check import check_graph
from trtcompile.onnx_io import op_histogram, to_model
from trtcompile.passes import PassContext, run_pipeline
from trtcompile.passes.fold_constants import fold_constants
from trtcompile.passes.fold_shapes import fold_shapes
from trtcompile.settings import OptimizeSettings


def apply(model: onnx.ModelProto, *passes, prepare: bool = True):
    """Run fold_constants + fold_shapes (as PIPELINE does first) then `passes`, checking the graph
    after each. Returns (fused model, report of the last pass)."""
    graph = gs.import_onnx(model)
    ctx = PassContext(settings=OptimizeSettings(check_each_pass=True))
    chain = ([fold_constants, fold_shapes] if prepare else []) + list(passes)
    graph, reports = run_pipeline(graph, ctx, chain)
    check_graph(graph, after=chain[-1].__name__)
    return to_model(graph), reports[-1]


def assert_same(before: onnx.ModelProto, after: onnx.ModelProto, feeds: dict, atol: float = 1e-4) -> float:
    expected, actual = ort_run(before, feeds), ort_run(after, feeds)
    return max(assert_close(actual[k], expected[k], atol, k) for k in expected)


def ops(model) -> dict[str, int]:
    return op_histogram(model)


def make_model(nodes: list[gs.Node], inputs: list[gs.Variable], outputs: list[gs.Variable], opset: int = 18):
    graph = gs.Graph(nodes=nodes, inputs=inputs, outputs=outputs, opset=opset)
    model = to_model(graph.cleanup().toposort())
    return onnx.shape_inference.infer_shapes(model)


def const(name: str, value) -> gs.Constant:
    return gs.Constant(name, np.asarray(value, dtype=np.float32) if not isinstance(value, np.ndarray) else value)


class Builder:
    """Tiny graphs inline: b.op("Mul", x, c) -> output Variable."""

    def __init__(self):
        self.nodes: list[gs.Node] = []
        self.count = 0

    def op(self, op: str, *inputs, attrs=None, dtype=None, outputs: int = 1):
        outs = []
        for _ in range(outputs):
            self.count += 1
            outs.append(gs.Variable(f"t{self.count}", dtype=dtype))
        self.nodes.append(gs.Node(op, name=f"{op}_{self.count}", attrs=attrs or {}, inputs=list(inputs), outputs=outs))
        return outs[0] if outputs == 1 else outs

    def model(self, inputs, outputs, opset: int = 18):
        for out in outputs:
            if out.dtype is None:
                out.dtype = np.float32
        return make_model(self.nodes, inputs, outputs, opset)
