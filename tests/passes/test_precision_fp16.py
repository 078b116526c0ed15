"""FP16/BF16 conversion: tiny families match FP32 in ONNX Runtime, and the FP32 islands are right.

Tolerances: FP16 hidden states / logits within 2e-2 abs and cosine >= 0.9999 of FP32 (these
models' activations are O(1), FP16's epsilon is ~1e-3 and errors add up over 2 layers).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import cosine, ort_run
from tiny_onnx import export, token_feeds

from trtcompile.build.tensorrt_rules import import_problems
from trtcompile.graph.check import check_graph
from trtcompile.passes import PassContext
from trtcompile.passes.convert_fp16 import convert_bf16, convert_fp16, convert_float
from trtcompile.passes.precision import precision_passes
from trtcompile.settings import OptimizeSettings


def _convert(model: onnx.ModelProto, fn=convert_fp16, **settings):
    ctx = PassContext(settings=OptimizeSettings(precision="fp16", **settings))
    graph = fn(gs.import_onnx(model), ctx)
    check_graph(graph, after=fn.__name__)
    out = gs.export_onnx(graph)
    out.ir_version = 10
    return out, ctx


@pytest.mark.parametrize("family,batch", [("bert", 2), ("gpt2", 2), ("llama", 1)])
def test_fp16_family_matches_fp32(family, batch):
    model = export(family)
    fp16, ctx = _convert(model)
    assert import_problems(fp16) == []  # TensorRT's documented rules
    for feed in token_feeds(2, batch, 16, seed=1):
        ref = next(iter(ort_run(model, feed).values()))
        got = next(iter(ort_run(fp16, feed).values()))
        assert got.dtype == np.float32  # keep_io_fp32: Cast back at the output
        assert np.isfinite(got).all()
        assert np.abs(got - ref).max() < 2e-2, family
        assert cosine(got, ref) > 0.9999
    # Every MatMul/Gemm weight is FP16 and the report names them.
    graph = gs.import_onnx(fp16)
    for node in graph.nodes:
        if node.op in ("MatMul", "Gemm"):
            weight = node.inputs[1]
            assert isinstance(weight, gs.Constant) and weight.values.dtype == np.float16, node.name
    assert {m["node"] for m in ctx.report.matched} >= {n.name for n in graph.nodes if n.op in ("MatMul", "Gemm")}
    for node in graph.nodes:
        if node.op in ("LayerNormalization", "RMSNormalization"):
            assert node.attrs["stash_type"] == 1
            assert node.inputs[0].dtype == np.float16


def test_fp16_rotary_angles_stay_fp32():
    fp16, ctx = _convert(export("llama"))
    kept = {d["node"]: d["reason"] for d in ctx.report.declined}
    graph = gs.import_onnx(fp16)
    trig = [n for n in graph.nodes if n.op in ("Cos", "Sin")]
    assert trig and all(n.name in kept for n in trig)
    assert all(n.outputs[0].dtype == np.float32 for n in trig)
    assert any("angles" in r for r in kept.values())


def test_fp16_io_fp16_when_asked():
    fp16, _ = _convert(export("bert"), keep_io_fp32=False)
    assert fp16.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    feed = token_feeds(1, 2, 8, seed=2)[0]
    ref = next(iter(ort_run(export("bert"), feed).values()))
    got = next(iter(ort_run(fp16, feed).values()))
    assert got.dtype == np.float16 and np.abs(got.astype(np.float32) - ref).max() < 2e-2


def _overflow_graph():
    # x ──Mul(1000)──> big (|big| ~ 1e5, overflows FP16) ──Mul(0.001)──> y ──MatMul(W)──> out
    #                                                                     └─ Relu ──> out2
    x = gs.Variable("x", np.float32, ["n", 8])
    big = gs.Variable("big", np.float32, ["n", 8])
    y = gs.Variable("y", np.float32, ["n", 8])
    out = gs.Variable("out", np.float32, ["n", 4])
    out2 = gs.Variable("out2", np.float32, ["n", 8])
    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    nodes = [
        gs.Node("Mul", "scale_up", inputs=[x, gs.Constant("k_up", np.array(1000.0, np.float32))], outputs=[big]),
        gs.Node("Mul", "scale_down", inputs=[big, gs.Constant("k_down", np.array(0.001, np.float32))], outputs=[y]),
        gs.Node("MatMul", "proj", inputs=[y, gs.Constant("w", w)], outputs=[out]),
        gs.Node("Relu", "relu", inputs=[y], outputs=[out2]),
    ]
    graph = gs.Graph(nodes=nodes, inputs=[x], outputs=[out, out2], opset=23)
    model = gs.export_onnx(graph)
    model.ir_version = 10
    return model


def test_fp16_keeps_overflowing_values_fp32():
    model = _overflow_graph()
    feed = {"x": (np.random.default_rng(1).standard_normal((3, 8)) * 100).astype(np.float32)}
    ctx = PassContext()
    graph = convert_float(gs.import_onnx(model), ctx, np.float16, sample_feeds=[feed])
    check_graph(graph)
    kept = {d["node"]: d["reason"] for d in ctx.report.declined}
    assert set(kept) == {"scale_up", "scale_down"}, kept  # producer and reader of `big`
    assert "big" in kept["scale_up"] and "65504" in kept["scale_up"]
    fp16 = gs.export_onnx(graph)
    fp16.ir_version = 10
    ref, got = ort_run(model, feed), ort_run(fp16, feed)
    for name in ("out", "out2"):
        assert np.isfinite(got[name]).all()
        np.testing.assert_allclose(got[name], ref[name], rtol=2e-2, atol=2e-1)
    assert graph.tensors()["big"].dtype == np.float32
    # Without the data-driven check `big` would be FP16 although it holds ~1e5 (> 65504). (ONNX Runtime
    # computes FP16 Mul through FP32 casts on CPU, so the overflow itself only shows on a GPU.)
    blind = convert_float(gs.import_onnx(model), PassContext(), np.float16, sample_feeds=[feed], threshold=1e9)
    assert blind.tensors()["big"].dtype == np.float16
    assert np.abs(ort_run(model, feed)["out2"] * 1000).max() > 65504


def test_fp16_decomposed_norm_statistics_stay_fp32():
    # x ─┬─ ReduceMean ─ Sub(d) ─ Pow(2) ─ ReduceMean ─ Add(eps) ─ Sqrt ─┐
    #    └───────────────┘ d ──────────────────────────────────────── Div ─> y
    x = gs.Variable("x", np.float32, [2, 16])
    mean, d, sq, var, ve, std, y = (gs.Variable(n) for n in ("mean", "d", "sq", "var", "ve", "std", "y"))
    y.dtype = np.float32
    axes = gs.Constant("axes", np.array([-1], np.int64))
    nodes = [
        gs.Node("ReduceMean", "mean", inputs=[x, axes], outputs=[mean]),
        gs.Node("Sub", "sub", inputs=[x, mean], outputs=[d]),
        gs.Node("Pow", "pow", inputs=[d, gs.Constant("two", np.array(2.0, np.float32))], outputs=[sq]),
        gs.Node("ReduceMean", "var", inputs=[sq, axes], outputs=[var]),
        gs.Node("Add", "eps", inputs=[var, gs.Constant("e", np.array(1e-5, np.float32))], outputs=[ve]),
        gs.Node("Sqrt", "sqrt", inputs=[ve], outputs=[std]),
        gs.Node("Div", "div", inputs=[d, std], outputs=[y]),
    ]
    model = gs.export_onnx(gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=23))
    model.ir_version = 10
    feed = {"x": (np.random.default_rng(3).standard_normal((2, 16)) * 300).astype(np.float32)}  # x^2 ~ 1e5
    ctx = PassContext()
    graph = convert_float(gs.import_onnx(model), ctx, np.float16, sample_feeds=[])
    kept = {d["node"] for d in ctx.report.declined}
    assert {"pow", "var", "eps", "sqrt"} <= kept and "div" not in kept
    fp16 = gs.export_onnx(graph)
    fp16.ir_version = 10
    np.testing.assert_allclose(ort_run(fp16, feed)["y"], ort_run(model, feed)["y"], atol=1e-2)


def test_bf16_structure():
    ctx = PassContext(settings=OptimizeSettings(precision="bf16"))
    graph = convert_bf16(gs.import_onnx(export("bert")), ctx)
    check_graph(graph)
    weights = [n.inputs[1] for n in graph.nodes if n.op == "MatMul" and isinstance(n.inputs[1], gs.Constant)]
    assert weights and all(w.values.dtype.name == "bfloat16" for w in weights)
    assert graph.outputs[0].dtype == np.float32


def test_precision_passes_by_setting():
    assert precision_passes(OptimizeSettings(precision="fp32")) == []
    assert precision_passes(OptimizeSettings(precision="int8")) == []
    assert precision_passes(OptimizeSettings(precision="fp16")) == [convert_fp16]
    assert precision_passes(OptimizeSettings(precision="bf16")) == [convert_bf16]


def test_sample_inputs_agree_on_shared_and_summed_dims():
    """A KV-cache decoder's mask spans past+new tokens; the overflow probe must feed it consistently
    (it used to give every dynamic axis the same size, and ORT rejected the decoder graph)."""
    import numpy as np
    import onnx_graphsurgeon as gs

    from trtcompile.passes.convert_fp16 import sample_inputs

    ids = gs.Variable("input_ids", np.int64, ["batch", "sequence"])
    mask = gs.Variable("attention_mask", np.int64, ["batch", "past_sequence+sequence"])
    past = gs.Variable("past.0.key", np.float32, ["batch", 2, "past_sequence", 8])
    graph = gs.Graph(inputs=[ids, mask, past], outputs=[])
    feeds = sample_inputs(graph, batch=2, sequence=5)
    assert feeds["input_ids"].shape == (2, 5)
    assert feeds["past.0.key"].shape == (2, 2, 5, 8)
    assert feeds["attention_mask"].shape == (2, 10)
