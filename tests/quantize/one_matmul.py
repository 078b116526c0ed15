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


def tied_head_model(emb: np.ndarray, w: np.ndarray) -> onnx.ModelProto:
    """A tied-embedding language model in miniature:

        ids ─Gather(E)─ h ─MatMul(W)─ h2 ─MatMul(Transpose(E))─ logits

    E [vocab, hidden] is one initializer read by the Gather and (transposed) by the head "lm_head";
    W [hidden, hidden] feeds the body MatMul "body"."""
    vocab, hidden = emb.shape
    nodes = [helper.make_node("Gather", ["E", "ids"], ["h"], name="embed"),
             helper.make_node("MatMul", ["h", "W"], ["h2"], name="body"),
             helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0], name="tied"),
             helper.make_node("MatMul", ["h2", "Et"], ["logits"], name="lm_head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["b", "s", vocab])],
                              [numpy_helper.from_array(emb, "E"), numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model
