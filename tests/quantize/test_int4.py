"""INT4 weight-only quantization: structure, numerics against numpy, ORT's MatMulNBits fusion, AWQ.

References are computed here from the graph's own initializers with plain numpy (w = q * scale per
block of K), never by the quantizer's code. Tolerances: ORT's DQ + MatMul against numpy
dequantize-then-matmul within 1e-4 (float32 sums); MatMulNBits at accuracy level 0 (FP32 compute)
within 1e-3.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from helpers import cosine, ort_run
from one_matmul import one_matmul_model, tied_head_model
from onnx import helper, numpy_helper
from tiny_onnx import export, token_feeds

from trtcompile.build.tensorrt_rules import import_problems
from trtcompile.errors import UserError
from trtcompile.graph_check import check_graph
from trtcompile.passes import ModelInfo, PassContext
from trtcompile.quantize import quantize_int4
from trtcompile.settings import CalibrationSettings

BATCH = {"gpt2": 2, "llama": 1}


def _quantize(family, model=None, **settings):
    model = model if model is not None else export(family)
    ctx = PassContext(model=ModelInfo(is_decoder=True))
    cal = token_feeds(4, BATCH[family], 16, seed=10)
    ev = token_feeds(2, BATCH[family], 16, seed=20)
    settings = {"int4_block_size": 32, "int4_activations": "fp32", **settings}
    q = quantize_int4(model, cal, CalibrationSettings(**settings), ctx, evaluation=ev)
    return model, q, ctx, ev


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def _dequantize(q: np.ndarray, scale: np.ndarray, block: int, zero=None) -> np.ndarray:
    w = q.astype(np.float64)
    if zero is not None:
        w = w - np.repeat(zero.astype(np.float64), block, axis=0)
    return w * np.repeat(scale.astype(np.float64), block, axis=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_int4_structure(family):
    model, q, ctx, _ = _quantize(family, int4_method="rtn")
    graph = gs.import_onnx(q)
    check_graph(graph, after="quantize_int4")
    inits = {t.name: t for t in q.graph.initializer}
    matmuls = [n for n in graph.nodes if n.op == "MatMul" and isinstance(n.inputs[1], gs.Variable)
               and n.inputs[1].inputs and n.inputs[1].inputs[0].op == "DequantizeLinear"]
    assert len(matmuls) == len(ctx.report.matched) > 0
    dqs = [n for n in graph.nodes if n.op == "DequantizeLinear"]
    assert len(dqs) == len(matmuls)  # one DQ per MatMul weight, nothing else dequantized
    for mm in matmuls:
        dq = mm.inputs[1].inputs[0]
        assert len(dq.outputs[0].outputs) == 1
        assert dq.attrs["axis"] == 0 and dq.attrs["block_size"] == 32
        w_name, s_name = dq.inputs[0].name, dq.inputs[1].name
        assert inits[w_name].data_type == onnx.TensorProto.INT4
        k, n = inits[w_name].dims
        assert list(inits[s_name].dims) == [k // 32, n]
        assert inits[s_name].data_type == onnx.TensorProto.FLOAT
        assert len(dq.inputs) == 2  # symmetric: no zero point (TensorRT takes none)
    # Every float MatMul left is activation x activation or declined with a reason.
    declined = {d["node"] for d in ctx.report.declined}
    for node in graph.nodes:
        if node.op == "MatMul" and node not in matmuls:
            assert node.name in declined
    assert not any(n.op == "Gemm" for n in graph.nodes)  # GPT-2's Gemms became MatMul + Add
    assert max(o.version for o in q.opset_import if o.domain in ("", "ai.onnx")) >= 21
    for match in ctx.report.matched:
        assert match["block_size"] == 32 and 0 <= match["weight_error"] < 0.2  # per-layer weight error (RTN)


def test_int4_numerics_match_numpy_dequantize_then_matmul():
    """One MatMul: ORT's DQ + MatMul (and its fused MatMulNBits) against numpy on the stored ints."""
    rng = np.random.default_rng(0)
    k, n = 256, 48
    w = rng.standard_normal((k, n)).astype(np.float32)
    model = one_matmul_model(w)
    for symmetric, block in ((True, 64), (False, 32)):
        q = quantize_int4(model, None, CalibrationSettings(int4_method="rtn", int4_block_size=block,
                                                           int4_symmetric=symmetric, int4_activations="fp32"),
                          PassContext())
        inits = _initializers(q)
        dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear")
        ints = inits[dq.input[0]].astype(np.int64)
        scale = inits[dq.input[1]]
        zero = inits[dq.input[2]].astype(np.int64) if len(dq.input) > 2 else None
        assert ints.min() >= (-8 if symmetric else 0) and ints.max() <= (7 if symmetric else 15)
        # TensorRT takes symmetric INT4 only: the import check (build/tensorrt_rules.py) says so for uint4.
        problems = import_problems(q)
        if symmetric:
            assert problems == []
        else:
            assert len(problems) == 1 and "a non-zero zero point" in problems[0], problems
        w_ref = _dequantize(ints, scale, block, zero)
        # Round to nearest: every weight within half a step of its dequantized value.
        assert np.all(np.abs(w - w_ref) <= np.repeat(scale, block, axis=0) / 2 + 1e-6)
        x = rng.standard_normal((5, k)).astype(np.float32)
        got = ort_run(q, {"x": x})["y"]
        np.testing.assert_allclose(got, x.astype(np.float64) @ w_ref, atol=1e-4)
        fused = _fused_session(q, accuracy_level=0)
        np.testing.assert_allclose(fused.run(None, {"x": x})[0], x.astype(np.float64) @ w_ref, atol=1e-3)


def _fused_session(model: onnx.ModelProto, accuracy_level: int | None = None, path=None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if path is not None:
        opts.optimized_model_filepath = str(path)
    if accuracy_level is not None:
        opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def test_ort_fuses_into_matmulnbits(tmp_path):
    model, q, ctx, ev = _quantize("llama", int4_method="rtn")
    path = tmp_path / "optimized.onnx"
    session = _fused_session(q, path=path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("MatMulNBits") == len(ctx.report.matched)
    assert "DequantizeLinear" not in ops
    # Fused (ORT's default accuracy level computes in int8) against the unfused DQ + MatMul graph.
    got = session.run(None, ev[0])[0]
    ref = next(iter(ort_run(q, ev[0]).values()))
    assert cosine(got, ref) > 0.999


def _as_model(graph: onnx.GraphProto, opset: int) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _worst_relative_error(q: onnx.ModelProto, model: onnx.ModelProto, feeds) -> float:
    """Largest relative L2 error of output y over the evaluation feeds."""
    return max(np.linalg.norm(ort_run(q, f)["y"] - ort_run(model, f)["y"]) / np.linalg.norm(ort_run(model, f)["y"])
               for f in feeds)


def _rtn_and_awq(model, cal, ev, **settings) -> dict[str, tuple[onnx.ModelProto, PassContext]]:
    """The model quantized with RTN and with AWQ (FP32 activations), each with its pass context."""
    out = {}
    for method in ("rtn", "awq"):
        ctx = PassContext()
        out[method] = (quantize_int4(model, cal, CalibrationSettings(int4_method=method, int4_activations="fp32",
                                                                     **settings), ctx, evaluation=ev), ctx)
    return out


def _x_feeds(rng, shape) -> tuple[list, list]:
    """Four calibration and two evaluation feeds of input x."""
    feeds = [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(6)]
    return feeds[:4], feeds[4:]


def _outlier_model(k: int = 128, n: int = 64):
    """x -> LayerNormalization(gamma with 4 channels 40x the rest) -> MatMul(W): activation outliers,
    the case AWQ is for. The outlier channels' weights are small, as in trained LLMs."""
    rng = np.random.default_rng(1)
    gamma = np.full(k, 0.5, np.float32)
    gamma[[3, 40, 77, 100]] = 20.0
    w = rng.standard_normal((k, n)).astype(np.float32) * 0.05
    w[[3, 40, 77, 100], :] *= 0.2
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="proj")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", "s", k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", "s", n])],
                              [numpy_helper.from_array(gamma, "gamma"), numpy_helper.from_array(np.zeros(k, np.float32), "beta"),
                               numpy_helper.from_array(w, "w")])
    model = _as_model(graph, 21)
    return (model, *_x_feeds(rng, (2, 32, k)))


def test_awq_beats_rtn_on_activation_outliers():
    model, cal, ev = _outlier_model()
    runs = _rtn_and_awq(model, cal, ev, int4_block_size=32)
    errors = {method: float(np.mean([np.linalg.norm(ort_run(q, f)["y"] - ort_run(model, f)["y"])
                                     / np.linalg.norm(ort_run(model, f)["y"]) for f in ev]))
              for method, (q, _) in runs.items()}
    q, ctx = runs["awq"]
    # 1/s went into the LayerNorm's gamma: no op added in front of the MatMul.
    assert [n.op_type for n in q.graph.node].count("Mul") == 0
    assert any("folded into LayerNormalization" in note for note in ctx.report.notes)
    (match,) = ctx.report.matched
    assert match["error"] < match["error_rtn"]
    assert errors["awq"] < 0.7 * errors["rtn"], errors


def test_lm_head_kept_float_by_default():
    _, q, ctx, _ = _quantize("llama", int4_method="rtn")
    (declined,) = [d for d in ctx.report.declined if "lm_head" in d["reason"]]
    graph = gs.import_onnx(q)
    head = next(n for n in graph.nodes if n.name == declined["node"])
    assert isinstance(head.inputs[1], gs.Constant) and head.inputs[1].values.dtype == np.float32


def test_int4_reports_llm_accuracy():
    _, _, ctx, _ = _quantize("llama", int4_method="awq")
    acc = ctx.report.extra["accuracy"]
    assert acc["metric"] == "top1_agreement" and acc["evaluation"] == "held-out"
    assert acc["perplexity_fp32"] > 1 and abs(acc["perplexity_ratio"] - 1) < 0.05
    assert any(m.get("awq_scaled") for m in ctx.report.matched)


def test_int4_bad_settings_fail_clearly():
    model = export("llama")
    with pytest.raises(UserError, match="awq needs calibration data.*\n  fix: .*rtn"):
        quantize_int4(model, None, CalibrationSettings(), PassContext())
    with pytest.raises(UserError, match="block size 48"):
        quantize_int4(model, None, CalibrationSettings(int4_method="rtn", int4_block_size=48), PassContext())
    with pytest.raises(UserError, match="INT4 method 'hqq'"):
        quantize_int4(model, None, CalibrationSettings(int4_method="hqq"), PassContext())
    with pytest.raises(UserError, match="gptq rounds symmetric INT4 only"):
        quantize_int4(model, None, CalibrationSettings(int4_method="gptq", int4_symmetric=False), PassContext())


def test_tied_lm_head_reading_transposed_embedding():
    """Gather(E) for the embedding, MatMul(h, Transpose(E)) for the LM head (a tied weight kept as
    one initializer): the head is quantized from a copy, the Gather keeps the float E."""
    rng = np.random.default_rng(2)
    vocab, hidden = 64, 32
    emb = rng.standard_normal((vocab, hidden)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["E", "ids"], ["h"], name="embed"),
             helper.make_node("Transpose", ["E"], ["Et"], perm=[1, 0], name="tied"),
             helper.make_node("MatMul", ["h", "Et"], ["logits"], name="lm_head")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["b", "s"])],
                              [helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["b", "s", vocab])],
                              [numpy_helper.from_array(emb, "E")])
    model = _as_model(graph, 21)
    ctx = PassContext()
    q = quantize_int4(model, None, CalibrationSettings(int4_method="rtn", int4_block_size=32, int4_lm_head=True), ctx)
    assert [m["node"] for m in ctx.report.matched] == ["lm_head"]
    inits = _initializers(q)
    gather = next(n for n in q.graph.node if n.op_type == "Gather")
    np.testing.assert_array_equal(inits[gather.input[0]], emb)
    ids = rng.integers(0, vocab, (1, 5)).astype(np.int64)
    got = ort_run(q, {"ids": ids})["logits"]
    assert cosine(got, emb[ids] @ emb.T) > 0.99


@pytest.mark.parametrize("target", [0.0, 1.5])
def test_library_callers_get_the_accuracy_target_checked(target):
    model = one_matmul_model(np.ones((64, 8), np.float32))
    with pytest.raises(UserError, match=r"accuracy target .* is outside \(0, 1\]"):
        quantize_int4(model, None, CalibrationSettings(int4_method="rtn", accuracy_target=target), PassContext())


def _joined_swiglu_model(k: int = 64, f: int = 128):
    """The MLP as fuse_parallel_matmuls leaves it; AWQ's 1/s for the down projection goes into the
    up columns of the joined weight (before: an extra Mul per layer in front of down_proj).

        x ── LayerNorm ── MatMul([W_gate | W_up]) ── Split(f, f) ── gate ── Sigmoid ─┐
                                                                   │         └──────── Mul ── silu ─┐
                                                                   └── up ──────────────────────── Mul ── MatMul(W_down) ── y
    """
    rng = np.random.default_rng(3)
    joined = rng.standard_normal((k, 2 * f)).astype(np.float32) * 0.2
    joined[:, f + np.array([5, 50, 99])] *= 15.0  # outlier channels of `up`, so of down's input
    down = rng.standard_normal((f, k)).astype(np.float32) * 0.05
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["n", "w_joined"], ["gu"], name="gate_up_joined"),
             helper.make_node("Split", ["gu", "widths"], ["gate", "up"], axis=-1, name="gate_up_split"),
             helper.make_node("Sigmoid", ["gate"], ["sig"], name="sigmoid"),
             helper.make_node("Mul", ["gate", "sig"], ["silu"], name="silu"),
             helper.make_node("Mul", ["silu", "up"], ["h"], name="swiglu"),
             helper.make_node("MatMul", ["h", "w_down"], ["y"], name="down_proj")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", "s", k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", "s", k])],
                              [numpy_helper.from_array(joined, "w_joined"), numpy_helper.from_array(down, "w_down"),
                               numpy_helper.from_array(np.array([f, f], np.int64), "widths"),
                               numpy_helper.from_array(np.ones(k, np.float32), "gamma"),
                               numpy_helper.from_array(np.zeros(k, np.float32), "beta")])
    model = _as_model(graph, 21)
    return (model, *_x_feeds(rng, (2, 32, k)))


def test_awq_folds_through_the_joined_gate_up_split():
    model, cal, ev = _joined_swiglu_model()
    runs = _rtn_and_awq(model, cal, ev, int4_block_size=32)
    for q, _ in runs.values():
        check_graph(gs.import_onnx(q))
    errors = {method: _worst_relative_error(q, model, ev) for method, (q, _) in runs.items()}
    q, ctx = runs["awq"]
    assert [n.op_type for n in q.graph.node].count("Mul") == 2  # silu's and SwiGLU's: no Mul(1/s) added
    assert any("folded into the columns of 'gate_up_joined'" in note for note in ctx.report.notes), ctx.report.notes
    down = next(m for m in ctx.report.matched if m["node"] == "down_proj")
    assert down.get("awq_scaled") and down["error"] < down["error_rtn"]
    # A fold into the wrong columns (gate's, or all of them) would not leave AWQ below RTN's error.
    assert errors["awq"] < 0.8 * errors["rtn"], errors


def test_float_lm_head_keeps_reading_the_tied_embedding():
    """Kept float (the default), a tied head reads the embedding through its Transpose: one table."""
    rng = np.random.default_rng(4)
    vocab, hidden = 64, 32
    emb = rng.standard_normal((vocab, hidden)).astype(np.float32)
    w = rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.2
    model = tied_head_model(emb, w)
    ctx = PassContext()
    q = quantize_int4(model, None, CalibrationSettings(int4_method="rtn", int4_block_size=32), ctx)
    assert [m["node"] for m in ctx.report.matched] == ["body"]
    assert any(d["node"] == "lm_head" and "kept float" in d["reason"] for d in ctx.report.declined), ctx.report.declined
    inits = _initializers(q)
    assert [k for k, v in inits.items() if v.size == vocab * hidden] == ["E"]
    head = next(n for n in q.graph.node if n.name == "lm_head")
    (transpose,) = [n for n in q.graph.node if n.output[0] == head.input[1]]
    assert transpose.op_type == "Transpose" and transpose.input[0] == "E"
    ids = rng.integers(0, vocab, (1, 5)).astype(np.int64)
    assert cosine(ort_run(q, {"ids": ids})["logits"], ort_run(model, {"ids": ids})["logits"]) > 0.99


def _gqa_attention_model(q_heads: int = 4, kv_heads: int = 2, head_dim: int = 16):
    """One attention block as export + fuse_parallel_matmuls leave it (rank-4 ONNX Attention, GQA,
    a cache Concat), with outlier channels in V so AWQ scales o_proj:

        x ── LayerNorm ── MatMul([Wq | Wk | Wv]) ── Split ── q/k/v ── Reshape ── Transpose(0,2,1,3)
        past_value ── Concat(·, v) ── present_value ──┐  (q, k likewise, without a cache)
        Attention(q, k, v; q_num_heads, kv_num_heads) ── Transpose(0,2,1,3) ── Reshape ── MatMul(W_o) ── y
    """
    rng = np.random.default_rng(5)
    hidden = q_heads * head_dim
    nq, nkv = q_heads * head_dim, kv_heads * head_dim
    w = rng.standard_normal((hidden, nq + 2 * nkv)).astype(np.float32) * 0.2
    w[:, nq + nkv + np.array([3, 20])] *= 12.0  # outlier V channels -> outlier channels of o_proj's input
    w_o = rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.1
    c = lambda name, v: numpy_helper.from_array(np.asarray(v), name)  # noqa: E731
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], axis=-1, name="ln"),
             helper.make_node("MatMul", ["n", "w_qkv"], ["qkv"], name="qkv_joined"),
             helper.make_node("Split", ["qkv", "widths"], ["q", "k", "v"], axis=-1, name="qkv_split")]
    for name, heads in (("q", q_heads), ("k", kv_heads), ("v", kv_heads)):
        nodes += [helper.make_node("Reshape", [name, f"shape_{name}"], [f"{name}4"], name=f"reshape_{name}"),
                  helper.make_node("Transpose", [f"{name}4"], [f"{name}t"], perm=[0, 2, 1, 3], name=f"transpose_{name}")]
    nodes += [helper.make_node("Concat", ["past_value", "vt"], ["present_value"], axis=-2, name="cache"),
              helper.make_node("Attention", ["qt", "kt", "present_value"], ["att"], q_num_heads=q_heads,
                               kv_num_heads=kv_heads, name="attention"),
              helper.make_node("Transpose", ["att"], ["att_t"], perm=[0, 2, 1, 3], name="transpose_out"),
              helper.make_node("Reshape", ["att_t", "shape_out"], ["o_in"], name="reshape_out"),
              helper.make_node("MatMul", ["o_in", "w_o"], ["y"], name="o_proj")]
    f = onnx.TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", f, [1, "s", hidden]),
         helper.make_tensor_value_info("past_value", f, [1, kv_heads, "p", head_dim])],
        [helper.make_tensor_value_info("y", f, [1, "s", hidden]),
         helper.make_tensor_value_info("present_value", f, [1, kv_heads, "t", head_dim])],
        [c("gamma", np.ones(hidden, np.float32)), c("beta", np.zeros(hidden, np.float32)), c("w_qkv", w), c("w_o", w_o),
         c("widths", np.array([nq, nkv, nkv], np.int64)), c("shape_q", np.array([0, 0, q_heads, head_dim], np.int64)),
         c("shape_k", np.array([0, 0, kv_heads, head_dim], np.int64)),
         c("shape_v", np.array([0, 0, kv_heads, head_dim], np.int64)), c("shape_out", np.array([0, 0, hidden], np.int64))])
    model = _as_model(graph, 23)
    feeds = [{"x": rng.standard_normal((1, 24, hidden)).astype(np.float32),
              "past_value": np.zeros((1, kv_heads, 0, head_dim), np.float32)} for _ in range(6)]
    return model, feeds[:4], feeds[4:]


@pytest.mark.parametrize("grouped", [False, True])
def test_awq_folds_o_proj_scales_into_v(grouped, monkeypatch):
    from trtcompile.quantize import int4

    monkeypatch.setattr(int4, "_AWQ_VALUE_FOLD", True)  # off by default: the cache would hold scaled V
    model, cal, ev = _gqa_attention_model()
    if grouped:  # as PIPELINE leaves it: one query block per kv head
        from trtcompile.graph.types import with_types
        from trtcompile.onnx_io import to_model
        from trtcompile.passes.group_query_heads import group_query_heads

        ctx = PassContext()
        model = to_model(group_query_heads(with_types(gs.import_onnx(model)), ctx))
        assert ctx.report.matched, ctx.report.declined
    runs = _rtn_and_awq(model, cal, ev, int4_block_size=16)
    for q, _ in runs.values():
        check_graph(gs.import_onnx(q))
    errors = {method: _worst_relative_error(q, model, ev) for method, (q, _) in runs.items()}
    q, ctx = runs["awq"]
    assert "Mul" not in [n.op_type for n in q.graph.node]  # neither a Mul(1/s) for o_proj nor for Q/K/V
    assert any("folded into the V columns of 'qkv_joined'" in note for note in ctx.report.notes), ctx.report.notes
    o_proj = next(m for m in ctx.report.matched if m["node"] == "o_proj")
    assert o_proj.get("awq_scaled") and o_proj["error"] < o_proj["error_rtn"]
    # V's scaled columns are undone by o_proj's rows only if each kv head's scale is shared by its query heads.
    assert errors["awq"] < 0.9 * errors["rtn"], errors


def test_awq_keeps_the_cache_unscaled_by_default(monkeypatch):
    """By default o_proj's 1/s is an explicit Mul: present_value stays the model's own V (up to
    V's INT4 rounding); with the fold on, the cache holds V scaled per channel."""
    from trtcompile.quantize import int4

    model, cal, ev = _gqa_attention_model()
    settings = CalibrationSettings(int4_method="awq", int4_block_size=16, int4_activations="fp32")
    caches = {}
    for fold in (False, True):
        monkeypatch.setattr(int4, "_AWQ_VALUE_FOLD", fold)
        ctx = PassContext()
        q = quantize_int4(model, cal, settings, ctx, evaluation=ev)
        assert any("V columns" in note for note in ctx.report.notes) == fold, ctx.report.notes
        caches[fold] = min(cosine(ort_run(q, f)["present_value"], ort_run(model, f)["present_value"]) for f in ev)
    assert caches[False] > 0.99 and caches[True] < caches[False] - 0.01, caches


def test_an_embedding_no_float_matmul_reads_is_stored_fp16(monkeypatch):
    """With the LM head INT4 the embedding table is read by its Gather alone: stored FP16 (+ a Cast
    back), half its bytes; a float tied head keeps it FP32 (the head would cast all of it per step)."""
    from trtcompile.quantize import int4

    monkeypatch.setattr(int4, "_HALF_TABLE_MIN_ELEMENTS", 0)  # the tiny table counts as big
    rng = np.random.default_rng(4)
    vocab, hidden = 64, 32
    emb = rng.standard_normal((vocab, hidden)).astype(np.float32)
    w = rng.standard_normal((hidden, hidden)).astype(np.float32) * 0.2
    model = tied_head_model(emb, w)
    ids = rng.integers(0, vocab, (1, 5)).astype(np.int64)
    results = {}
    for int4_head in (False, True):
        ctx = PassContext()
        q = quantize_int4(model, None, CalibrationSettings(int4_method="rtn", int4_block_size=32,
                                                           int4_lm_head=int4_head), ctx)
        inits = _initializers(q)
        gather = next(n for n in q.graph.node if n.op_type == "Gather")
        results[int4_head] = ort_run(q, {"ids": ids})["logits"]
        if not int4_head:
            assert inits["E"].dtype == np.float32  # the float head reads it too
            continue
        assert inits[gather.input[0]].dtype == np.float16
        np.testing.assert_array_equal(inits[gather.input[0]], emb.astype(np.float16))
        (cast,) = [n for n in q.graph.node if gather.output[0] in n.input]
        assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT
        assert any("stored FP16" in note for note in ctx.report.notes), ctx.report.notes
        assert import_problems(q) == []
    reference = ort_run(model, {"ids": ids})["logits"]
    assert cosine(results[True], reference) > 0.99 and cosine(results[False], reference) > 0.99
