"""GPTQ weight rounding: the rounded values stay on the quantizer's grid, and the layer's output on
unseen rows of the same distribution is closer than round-to-nearest's.

References are plain numpy here (per-column or per-block max/qmax scales, np.rint), never the
quantizer's code. Fixtures have correlated input channels (what makes GPTQ's compensation pay);
the margins are 0.8x nearest's error (GPTQ gives about 0.5-0.7x) and, for the INT8 graph whose
activations are rounded too, 0.9x (it gives 0.85x; seeded, so not flaky).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from helpers import ort_run
from onnx import helper, numpy_helper

from trtcompile.passes import PassContext
from trtcompile.quantize import quantize_int4, quantize_int8
from trtcompile.quantize.gptq import gptq_round
from trtcompile.quantize.qdq import INT8, check_placement
from trtcompile.settings import CalibrationSettings


def _correlated_rows(rng, rows: int, k: int) -> np.ndarray:
    """Rows of one distribution (the same channel mix for every call): scaled, correlated channels."""
    mix = np.random.default_rng(99).standard_normal((k, k)) / np.sqrt(k) + np.eye(k)
    return (rng.standard_normal((rows, k)) * np.linspace(0.2, 3.0, k)) @ mix


def _error(x, w, w_q) -> float:
    return float(np.linalg.norm(x @ (w - w_q)) / np.linalg.norm(x @ w))


def test_gptq_round_int8_per_channel_and_int4_blocks():
    rng = np.random.default_rng(0)
    k, n = 64, 48
    x_cal, x_new = _correlated_rows(rng, 1024, k), _correlated_rows(rng, 512, k)
    w = rng.standard_normal((k, n)) * 0.1
    gram = x_cal.T @ x_cal

    q, scale = gptq_round(w, gram, 127)
    assert scale.shape == (n,) and np.array_equal(q, np.rint(q)) and np.abs(q).max() <= 127
    np.testing.assert_allclose(scale, np.abs(w).max(axis=0) / 127, rtol=1e-6)  # the RTN scale: TensorRT's form
    nearest = np.clip(np.rint(w / scale), -127, 127) * scale
    assert _error(x_new, w, q * scale) < 0.8 * _error(x_new, w, nearest)

    grid = lambda v: np.clip(np.rint(v), -8, 7)  # noqa: E731 - symmetric INT4
    q4, s4 = gptq_round(w, gram, 7, group=16, grid=grid)
    assert s4.shape == (k // 16, n) and q4.min() >= -8 and q4.max() <= 7 and np.array_equal(q4, np.rint(q4))
    w4 = q4 * np.repeat(s4, 16, axis=0)
    blocks = w.reshape(k // 16, 16, n)
    s_rtn = np.abs(blocks).max(axis=1) / 7
    rtn = (np.clip(np.rint(blocks / s_rtn[:, None]), -8, 7) * s_rtn[:, None]).reshape(k, n)
    assert _error(x_new, w, w4) < 0.8 * _error(x_new, w, rtn)

    # act-order: rows taken busiest-first, scales from each unrounded block (blocks stay along K).
    qa, sa = gptq_round(w, gram, 7, group=16, grid=grid, act_order=True)
    np.testing.assert_allclose(sa, s_rtn, rtol=1e-6)
    assert qa.min() >= -8 and qa.max() <= 7 and np.array_equal(qa, np.rint(qa))
    assert _error(x_new, w, qa * np.repeat(sa, 16, axis=0)) < 0.8 * _error(x_new, w, rtn)


def _linear_model(rng, k: int = 64, n: int = 32):
    """x -> MatMul(W) with correlated input channels (the calibration and evaluation feeds)."""
    w = (rng.standard_normal((k, n)) * 0.1).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="proj")], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", "s", k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", "s", n])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    feeds = [{"x": _correlated_rows(rng, 64, k).reshape(2, 32, k).astype(np.float32)} for _ in range(8)]
    return model, w, feeds[:6], feeds[6:]


def test_int8_gptq_weights_in_graph():
    model, w, cal, ev = _linear_model(np.random.default_rng(3))
    errors = {}
    for rounding in ("nearest", "gptq"):
        ctx = PassContext()
        settings = CalibrationSettings(weight_rounding=rounding, smoothquant_alpha=None)
        q = quantize_int8(model, cal, settings, ctx, evaluation=ev)
        assert check_placement(gs.import_onnx(q), ["proj"], INT8) == []
        inits = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
        w_dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[0]) is not None
                    and inits[n.input[0]].ndim == 2)
        w_q = inits[w_dq.input[0]].astype(np.float64) * inits[w_dq.input[1]][None, :]
        x_scale = float(next(inits[n.input[1]] for n in q.graph.node if n.op_type == "QuantizeLinear"))
        err = []
        for feed in ev:
            x_q = np.clip(np.rint(feed["x"] / x_scale), -128, 127) * x_scale
            got = ort_run(q, feed)["y"]
            np.testing.assert_allclose(got, x_q @ w_q, atol=1e-4)  # the graph computes with its int8 weights
            # The weights' share of the error (activation rounding, the same for both, left out).
            err.append(np.linalg.norm(got - x_q @ w) / np.linalg.norm(feed["x"] @ w))
        errors[rounding] = float(np.mean(err))
        if rounding == "gptq":
            assert any(note.startswith("gptq: 1 weights") for note in ctx.report.notes)
            assert ctx.report.extra["accuracy"]["weight_rounding"] == "gptq"
    assert errors["gptq"] < 0.9 * errors["nearest"], errors


def test_int4_gptq_beats_rtn():
    model, w, cal, ev = _linear_model(np.random.default_rng(4))
    errors = {}
    for method in ("rtn", "gptq"):
        q = quantize_int4(model, cal, CalibrationSettings(int4_method=method, int4_block_size=32,
                                                          int4_activations="fp32"), PassContext(), evaluation=ev)
        # AWQ's 1/s has no producer to fold into here: an explicit Mul in front of the MatMul.
        assert [n.op_type for n in q.graph.node][-2:] == ["DequantizeLinear", "MatMul"]
        errors[method] = float(np.mean([np.linalg.norm(ort_run(q, f)["y"] - f["x"] @ w) / np.linalg.norm(f["x"] @ w)
                                        for f in ev]))
    assert errors["gptq"] < 0.8 * errors["rtn"], errors
