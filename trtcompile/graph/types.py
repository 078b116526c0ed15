"""Dtypes for every tensor of a graph (passes and the quantizer decide by dtype)."""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from trtcompile.onnx_io import fix_ir_version


def with_types(graph: gs.Graph) -> gs.Graph:
    """The graph re-imported after ONNX shape inference, so every tensor knows its dtype."""
    model = gs.export_onnx(graph)
    fix_ir_version(model)
    try:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; unknown dtypes are left alone
        pass
    return gs.import_onnx(model)
