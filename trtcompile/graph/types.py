"""Dtypes for every tensor of a graph (passes and the quantizer decide by dtype)."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from trtcompile.onnx_io import to_graph, to_model


def with_types(graph: gs.Graph) -> gs.Graph:
    """The graph re-imported after ONNX shape inference, so every tensor knows its dtype."""
    model = to_model(graph)  # weights on disk stay there (lazy_weights.py)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; unknown dtypes are left alone
        pass
    return to_graph(model)
