"""FP8 (E4M3) Q/DQ: placement like INT8, numerics against a reference cast done here with ml_dtypes.

Reference: x -> clip(x / s_x, +-448) cast to float8_e4m3fn (round to nearest even) -> * s_x, and the
weight ints read back from the graph times their per-channel scales; exact up to float32 sums
(atol 1e-5). Scales are checked against max |x| / 448 and max |w| / 448 computed here.
"""

from __future__ import annotations

from dataclasses import replace

import ml_dtypes
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from helpers import cosine, ort_run
from one_matmul import one_matmul_model, tied_head_model
from onnx import numpy_helper
from tiny_onnx import export, token_feeds

from trtcompile.passes import ModelInfo, PassContext
from trtcompile.quantize import quantize_fp8
from trtcompile.quantize.qdq import FP8, check_placement
from trtcompile.settings import CalibrationSettings


def _matmul_model(k=64, n=32):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((k, n)).astype(np.float32)
    model = one_matmul_model(w)
    cal = [{"x": rng.standard_normal((8, k)).astype(np.float32) * 3} for _ in range(3)]
    return model, w, cal


def test_fp8_numerics_match_reference_cast():
    model, w, cal = _matmul_model()
    ctx = PassContext()
    q = quantize_fp8(model, cal, CalibrationSettings(method="minmax", weight_rounding="nearest"), ctx)
    assert check_placement(gs.import_onnx(q), ["mm"], FP8) == []
    inits = {t.name: t for t in q.graph.initializer}
    nodes = {n.op_type: n for n in q.graph.node}
    wdq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].data_type == onnx.TensorProto.FLOAT8E4M3FN)
    w_q = numpy_helper.to_array(inits[wdq.input[0]]).astype(np.float32)
    w_scale = numpy_helper.to_array(inits[wdq.input[1]])
    np.testing.assert_allclose(w_scale, np.abs(w).max(axis=0) / 448, rtol=1e-6)
    x_scale = float(numpy_helper.to_array(inits[nodes["QuantizeLinear"].input[1]]))
    amax = max(float(np.abs(f["x"]).max()) for f in cal)
    np.testing.assert_allclose(x_scale, amax / 448, rtol=1e-6)

    x = np.random.default_rng(9).standard_normal((5, w.shape[0])).astype(np.float32) * 4  # some beyond amax
    x_ref = np.clip(x / np.float32(x_scale), -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * x_scale
    expected = x_ref.astype(np.float64) @ (w_q * w_scale).astype(np.float64)
    np.testing.assert_allclose(ort_run(q, {"x": x})["y"], expected, atol=1e-4)
    # The E4M3 weight is within its rounding step (3 mantissa bits: relative 2^-4) of the original.
    assert np.all(np.abs(w_q * w_scale - w) <= np.abs(w) / 16 + w_scale * 2.0 ** -9)


def test_fp8_llm_accuracy_and_structure():
    model = export("llama")
    ctx = PassContext(model=ModelInfo(is_decoder=True))
    cal, ev = token_feeds(4, 1, 16, seed=10), token_feeds(2, 1, 16, seed=20)
    q = quantize_fp8(model, cal, CalibrationSettings(), ctx, evaluation=ev)
    quantized = [m["node"] for m in ctx.report.matched]
    graph = gs.import_onnx(q)
    assert quantized and check_placement(graph, quantized, FP8) == []
    assert all(m["dtype"] == "fp8" for m in ctx.report.matched)
    assert ctx.report.name == "quantize_fp8"
    assert any("smoothquant 'auto'" in n for n in ctx.report.notes)  # INT8-specific search skipped
    acc = ctx.report.extra["accuracy"]
    assert acc["fp8_matmuls"] == len(quantized) and acc["metric"] == "top1_agreement"
    assert abs(acc["perplexity_ratio"] - 1) < 0.01
    for feed in ev:
        ref, got = next(iter(ort_run(model, feed).values())), next(iter(ort_run(q, feed).values()))
        assert cosine(got, ref) > 0.995


def _tied_model():
    rng = np.random.default_rng(4)
    emb = rng.standard_normal((64, 32)).astype(np.float32)
    w = rng.standard_normal((32, 32)).astype(np.float32) / 6
    cal = [{"ids": rng.integers(0, 64, (2, 8)).astype(np.int64)} for _ in range(3)]
    return tied_head_model(emb, w), emb, w, cal


def test_fp8_keeps_the_lm_head_float_and_the_embedding_tied():
    """Default: the body MatMul is FP8, the head reads the one float E through its Transpose (no copy);
    --fp8-lm-head: the head is FP8 too, from a copy, and the Gather still reads the float E."""
    model, emb, w, cal = _tied_model()
    ctx = PassContext()
    q = quantize_fp8(model, cal, CalibrationSettings(weight_rounding="nearest"), ctx)
    assert [m["node"] for m in ctx.report.matched] == ["body"]
    (head,) = [d for d in ctx.report.declined if d["node"] == "lm_head"]
    assert "LM head kept float" in head["reason"]
    graph = gs.import_onnx(q)
    assert check_placement(graph, ["body"], FP8) == []
    big = [t for t in q.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2]
    assert [t.name for t in big] == ["E"]  # one float copy of the tied weight, nothing materialized
    lm = next(n for n in graph.nodes if n.name == "lm_head")
    assert lm.inputs[1].inputs[0].op == "Transpose" and lm.inputs[1].inputs[0].inputs[0].name == "E"

    ids = cal[0]["ids"]
    x = emb[ids]
    x_scale = max(float(np.abs(emb[f["ids"]]).max()) for f in cal) / 448
    x_q = np.clip(x / x_scale, -448, 448).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * x_scale
    w_scale = np.abs(w).max(axis=0) / 448
    w_q = (w / w_scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * w_scale
    expected = (x_q.astype(np.float64) @ w_q) @ emb.T.astype(np.float64)  # head in float
    np.testing.assert_allclose(ort_run(q, {"ids": ids})["logits"], expected, rtol=1e-4, atol=1e-4)

    ctx = PassContext()
    q = quantize_fp8(model, cal, CalibrationSettings(weight_rounding="nearest", fp8_lm_head=True), ctx)
    assert sorted(m["node"] for m in ctx.report.matched) == ["body", "lm_head"]
    assert check_placement(gs.import_onnx(q), ["body", "lm_head"], FP8) == []
    gather = next(n for n in q.graph.node if n.op_type == "Gather")
    np.testing.assert_array_equal(numpy_helper.to_array(next(t for t in q.graph.initializer
                                                             if t.name == gather.input[0])), emb)


def test_fp8_gate_on_a_language_model_ranks_by_kl_and_keeps_the_sensitive_layer():
    """Token 5 carries a 3e4 outlier channel, so the body's per-tensor FP8 input scale flushes every
    other token's activations to zero; the body maps that channel to ~0, so the head's input is
    tame. With the head in FP8 too (--fp8-lm-head), the gate must keep the body float, rank it
    first by KL, and the kept graph's top-1 (measured here, against the FP32 model) meet the target."""
    rng = np.random.default_rng(4)
    emb = rng.standard_normal((64, 32)).astype(np.float32)
    emb[5, 7] = 3e4
    w = rng.standard_normal((32, 32)).astype(np.float32) / 6
    w[7, :] = 1e-5
    model = tied_head_model(emb, w)
    cal = [{"ids": np.concatenate([[[5]], rng.integers(0, 64, (1, 15))], axis=1).astype(np.int64)} for _ in range(3)]
    ev = [{"ids": rng.integers(0, 64, (1, 32)).astype(np.int64)} for _ in range(4)]
    settings = CalibrationSettings(fp8_lm_head=True, weight_rounding="nearest")
    ctx = PassContext()
    quantize_fp8(model, cal, settings, ctx, evaluation=ev)
    assert ctx.report.extra["accuracy"]["score"] < 0.95, "the planted outlier no longer hurts: the test tests nothing"
    ctx = PassContext()
    q = quantize_fp8(model, cal, replace(settings, accuracy_target=0.95), ctx, evaluation=ev)
    assert [m["node"] for m in ctx.report.matched] == ["lm_head"]
    (body,) = ctx.report.declined
    assert body["node"] == "body" and "KL alone" in body["reason"]
    sensitivity = ctx.report.extra["sensitivity"]
    assert list(sensitivity) == ["body", "lm_head"] and sensitivity["body"] > 100 * sensitivity["lm_head"]
    curve = ctx.report.extra["fallback_curve"]  # both FP8 (below target), then the head alone (meets it)
    assert [p["quantized"] for p in curve] == [2, 1]
    assert curve[0]["score"] < 0.95 <= curve[1]["score"]
    assert abs(curve[1]["score"] - ctx.report.extra["accuracy"]["score"]) < 1e-6
    agree = [ort_run(q, f)["logits"].argmax(-1) == ort_run(model, f)["logits"].argmax(-1) for f in ev]
    top1 = float(np.mean(np.concatenate([a.ravel() for a in agree])))
    assert top1 >= 0.95 and top1 == ctx.report.extra["accuracy"]["score"]
