"""Infer shapes and dtypes, then fold the shape arithmetic they make constant.

The legacy (TorchScript) exporter writes no value_info: every intermediate has unknown shape and
dtype, so `fold_constants` cannot fold `Shape -> Gather -> Unsqueeze -> Concat` chains even where
the dimension is static (head size, hidden size), and the fusions that follow cannot read a head
size, prove a Cast redundant, or see constant Slice bounds. ONNX shape inference fills them in;
a second fold then removes what became constant (about 40% of a legacy Llama's nodes).
The dynamo exporter already writes shapes, so there this is cheap and mostly a no-op.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtcompile.graph.context import PassContext
from trtcompile.passes.fold_constants import fold_keeping_shared_weights


def infer_shapes(graph: gs.Graph) -> int:
    """Copy ONNX-inferred shapes/dtypes onto tensors that lack them; return how many were filled."""
    from trtcompile.onnx_io import fix_ir_version

    model = fix_ir_version(gs.export_onnx(_without_weights(graph), do_type_check=False))
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    infos = {vi.name: vi for vi in inferred.graph.value_info}
    filled = 0
    tensors = graph.tensors()
    for name, vi in infos.items():
        t = tensors.get(name)
        if not isinstance(t, gs.Variable) or not vi.type.HasField("tensor_type"):
            continue
        tt = vi.type.tensor_type
        if t.dtype is None and tt.elem_type:
            from onnx.helper import tensor_dtype_to_np_dtype

            t.dtype = tensor_dtype_to_np_dtype(tt.elem_type)
            filled += 1
        if tt.HasField("shape"):
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
            if t.shape is None or _static_dims(shape) > _static_dims(t.shape):
                t.shape = shape
                filled += 1
    return filled


def _without_weights(graph: gs.Graph) -> gs.Graph:
    """A shallow copy whose large constants are graph inputs of the same dtype and shape.

    Shapes depend only on structure and small constants (shape operands): exporting the weights
    too would copy every byte of a large model just to throw it away.
    """
    copy = graph.copy()   # copies nodes and tensors, not weight buffers
    stand_ins: dict[str, gs.Variable] = {}
    for node in copy.nodes:
        for i, t in enumerate(node.inputs):
            if isinstance(t, gs.Constant) and int(np.prod(t.shape)) > 256:
                if t.name not in stand_ins:
                    stand_ins[t.name] = gs.Variable(t.name, dtype=t.dtype, shape=list(t.shape))
                node.inputs[i] = stand_ins[t.name]
    copy.inputs = list(copy.inputs) + list(stand_ins.values())
    return copy


def _static_dims(shape) -> int:
    return sum(1 for d in shape if isinstance(d, int) and d > 0) if shape is not None else -1


def fold_shapes(graph: gs.Graph, ctx: PassContext, max_rounds: int = 3) -> gs.Graph:
    """Infer, fold, repeat: a fold can make a Slice bound constant, which makes the next
    inference give a static shape (Phi-3's partial rotary needs two rounds)."""
    before = len(graph.nodes)
    filled_total = 0
    for _ in range(max_rounds):
        filled = infer_shapes(graph)
        filled_total += filled
        nodes = len(graph.nodes)
        if filled:
            fold_keeping_shared_weights(graph)  # a tied embedding stays one initializer
        if not filled or len(graph.nodes) == nodes:
            break
    ctx.report.note(f"filled {filled_total} shapes/dtypes, removed {before - len(graph.nodes)} nodes")
    return graph
