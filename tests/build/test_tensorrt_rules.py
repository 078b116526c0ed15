"""The documented TensorRT import rules (build/tensorrt_rules.py): each one fires on a graph that
breaks it, naming the node, and stays quiet on a graph that keeps it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtcompile.build.tensorrt_rules import import_problems

F, B, I64 = TensorProto.FLOAT, TensorProto.BOOL, TensorProto.INT64


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(*i) for i in inputs],
                              [helper.make_tensor_value_info(*o) for o in outputs], list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 24)])


QKV = [("q", F, [1, 4, 1, 8]), ("k", F, [1, 2, 16, 8]), ("v", F, [1, 2, 16, 8]), ("mask", B, [1, 1, 1, 16])]


def _attention(inputs=("q", "k", "v", "mask"), outputs=("y",), extra=(), **attrs):
    return _model([helper.make_node("Attention", list(inputs), list(outputs), name="attn", q_num_heads=4,
                                    kv_num_heads=2, **attrs)], QKV + list(extra), [("y", F, None)])


def test_the_attention_tensorrt_takes_passes():
    assert import_problems(_attention()) == []


@pytest.mark.parametrize("model, fragment", [
    (_attention(inputs=("q", "k", "v", "mask", "pk", "pv"), extra=[("pk", F, [1, 2, 3, 8]), ("pv", F, [1, 2, 3, 8])]),
     "past_key/past_value inputs"),
    (_attention(outputs=("y", "present_k")), "2 outputs; TensorRT takes one output only"),
    (_attention(softcap=30.0), "softcap 30.0"),
    (_attention(softmax_precision=1), "softmax_precision"),
    (_attention(is_causal=1), "a mask together with is_causal"),
    (_attention(inputs=("q", "k", "v", "", "", "", "n"), extra=[("n", I64, [1])]), "nonpad_kv_seqlen"),
])
def test_attention_rules_fire_naming_the_node(model, fragment):
    problems = import_problems(model)
    assert len(problems) == 1 and problems[0].startswith("node 'attn' (Attention): ") and fragment in problems[0]


def test_mixed_ranks_are_named():
    model = _attention()
    model.graph.input[0].type.tensor_type.shape.ClearField("dim")
    for d in (1, 4, 8):
        model.graph.input[0].type.tensor_type.shape.dim.add().dim_value = d
    assert import_problems(model) == ["node 'attn' (Attention): Q/K/V ranks [3, 4]; TensorRT takes all rank 3 or "
                                      "all rank 4"]


def _scatter(cache_shape=(1, 2, 16, 8), cache_type=F, mode="linear", output_is_graph_output=True):
    nodes = [helper.make_node("TensorScatter", ["past", "new", "pos"], ["present"], name="update", axis=2, mode=mode)]
    outputs = [("present", cache_type, None)]
    if not output_is_graph_output:
        nodes.append(helper.make_node("Identity", ["present"], ["copy"]))
        outputs = [("copy", cache_type, None)]
    return _model(nodes, [("past", cache_type, list(cache_shape)), ("new", cache_type, [1, 2, 1, 8]),
                          ("pos", I64, [1])], outputs)


def test_the_kv_cache_update_tensorrt_takes_passes():
    assert import_problems(_scatter()) == []


@pytest.mark.parametrize("model, fragment", [
    (_scatter(mode="circular"), "linear only"),
    (_scatter(cache_shape=(1, 2, "max_cache", 8)), "no static length along axis 2"),
    (_scatter(cache_type=TensorProto.INT8), "a INT8 cache"),
    (_scatter(output_is_graph_output=False), "is not a network output"),
])
def test_kv_cache_update_rules_fire(model, fragment):
    problems = import_problems(model)
    assert len(problems) == 1 and problems[0].startswith("node 'update' (TensorScatter): ") and fragment in problems[0]


def test_axes_computed_at_run_time_a_zero_point_and_unsupported_or_custom_ops_are_named():
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    zero = numpy_helper.from_array(np.array(3, np.int8), "zp")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "scale")
    model = _model([
        helper.make_node("Shape", ["x"], ["dyn_axes"], start=1, end=2),
        helper.make_node("Squeeze", ["x", "dyn_axes"], ["a"], name="squeeze_dyn"),
        helper.make_node("Squeeze", ["x", "axes"], ["b"], name="squeeze_const"),
        helper.make_node("DequantizeLinear", ["w", "scale", "zp"], ["wf"], name="dq"),
        helper.make_node("Unique", ["b"], ["u"], name="unique"),
        helper.make_node("GroupQueryAttention", ["b"], ["g"], name="gqa", domain="com.microsoft"),
    ], [("x", F, [2, 1, 3]), ("w", TensorProto.INT8, [3])], [("a", F, None), ("wf", F, None), ("u", F, None),
                                                            ("g", F, None)], [axes, zero, scale])
    problems = import_problems(model)
    assert problems == [
        "node 'squeeze_dyn' (Squeeze): its axes input 'dyn_axes' is computed at run time; TensorRT needs a constant",
        "node 'dq' (DequantizeLinear): a non-zero zero point; TensorRT takes symmetric quantization only",
        "node 'unique' (Unique): not supported by TensorRT's ONNX parser",
        "node 'gqa' (GroupQueryAttention): custom operator of domain 'com.microsoft'; TensorRT's parser needs a "
        "plugin for it",
    ]


def test_nodes_inside_an_if_are_checked_too():
    branch = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="inner_unique")], "then", [],
                               [helper.make_tensor_value_info("u", F, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["i"])], "else", [],
                              [helper.make_tensor_value_info("i", F, None)])
    model = _model([helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=other)],
                   [("c", B, []), ("x", F, [3])], [("y", F, None)])
    assert import_problems(model) == ["node 'inner_unique' (Unique): not supported by TensorRT's ONNX parser"]
