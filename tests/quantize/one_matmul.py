"""A model of one MatMul on a constant weight (opset 21: INT4/FP8 Q/DQ), for the quantizer tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def one_matmul_model(w: np.ndarray) -> onnx.ModelProto:
    """y = x @ w, x: [b, K] float32, w: [K, N] an initializer named "w", the node named "mm"."""
    k, n = w.shape
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model
