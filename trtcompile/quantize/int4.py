"""INT4 weight-only quantization: a block-quantized DequantizeLinear feeding each MatMul weight.

    X (FP16 for TensorRT, or FP32) ─────────────────────────────┐
                                                               MatMul ── Y
    W_int4 [K, N] ──DequantizeLinear(axis=0, block_size=B)─────┘
                    scale [K/B, N] (float), zero point only with --int4-asymmetric

TensorRT imports this as its INT4 weight-only GEMM (block quantization is INT4-only; its
DequantizeLayer takes no non-zero zero point, so symmetric is the default and the TensorRT form);
ONNX Runtime on CPU fuses exactly this pair into `MatMulNBits`, so one graph serves both. One DQ
per MatMul; the graph's other ops are untouched, except that an embedding table no float MatMul
reads is stored FP16 (`_half_gather_tables`). The activations
around the DQ stay float: with `--int4-activations fp16` (default, TensorRT's fast path) the
optimize stage runs `convert_fp16` as the next pipeline step, with the same FP32 islands as
`--precision fp16`.

Block size: 128 by default (ModelOpt's ONNX INT4 default and TensorRT-LLM's W4A16 group size:
TensorRT's INT4 GEMM reads a block's scale once per 128 weights); a weight whose K is not a
multiple of it takes the largest of 64/32/16 that divides K, and the report says so.

Methods: `rtn` (round to nearest) or `awq` (awq.py: activation-aware scales folded into the
producer of X, then a clip search), both on FP32 weights. The report lists per MatMul the block,
scales, the AWQ alpha and the relative output error on calibration rows with RTN and with the
chosen method; with held-out data, perplexity and top-1 agreement against FP32.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtcompile.errors import UserError
from trtcompile.onnx_io import to_graph
from trtcompile.graph.context import PassContext
from trtcompile.quantize.qdq import lm_head as lm_head_node
from trtcompile.settings import CalibrationSettings

log = logging.getLogger("trtcompile.quantize")
INT4_METHODS = ("awq", "rtn", "gptq")
_AWQ_ROWS = 256  # activation rows per tensor for the scale and clip searches
# An activation whose producer cannot take 1/s (the attention output, for o_proj) gets a Mul(1/s)
# of its own when True, stays unscaled when False.
_AWQ_EXPLICIT_MUL = True
# o_proj's 1/s into V's columns (value_fold.py), its scales tied across the heads sharing a kv head.
# Off: the KV cache would then hold V scaled per channel, no longer the model's own present.*.value
# that verification compares with PyTorch (not yet checked on a real LLM's scales); o_proj gets
# an explicit Mul instead.
_AWQ_VALUE_FOLD = False
_GPTQ_DAMP = 0.1  # gptq.DEFAULT_DAMP (chosen on MiniLM's held-out text)
# Act-order (busiest input channels rounded first, static block scales): on SmolLM2-135M, block 128
# symmetric, AWQ+GPTQ went from 1.278x to 1.221x FP32's perplexity (64 calibration lines) and to
# 1.187x with all 157 lines and 1024 AWQ rows (README, 2026-11-30).
_GPTQ_ACT_ORDER = True


def quantize_int4(model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]] | None,
                  settings: CalibrationSettings, ctx: PassContext,
                  evaluation: list[dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    from trtcompile.graph.types import with_types
    from trtcompile.quantize.int8 import _export, prepared_graph, step_report
    from trtcompile.quantize.qdq import find_targets

    report = step_report(ctx, "quantize_int4", model)
    _check_int4_settings(settings)
    awq = settings.int4_method in ("awq", "gptq")  # gptq: AWQ's scales, then GPTQ rounding
    gptq = settings.int4_method == "gptq"
    if awq and not calibration:
        raise UserError(f"--int4-method {settings.int4_method} needs calibration data (it measures activations)",
                        hint="pass --calibration-data FILE (a text file works for models with a tokenizer), "
                             "or use --int4-method rtn")
    graph = prepared_graph(model, calibration, evaluation, settings, report, float_lm_head=not settings.int4_lm_head)
    gemms = _gemms_to_matmuls(graph)
    if gemms:
        report.note(f"{gemms} Gemm(s) rewritten as MatMul (+ Add): MatMulNBits and the INT4 GEMM take MatMul")
    from trtcompile.quantize.int8 import _is_language_model

    lm_head = lm_head_node(graph, language_model=_is_language_model(ctx, model))
    targets = []
    if lm_head is not None and not settings.int4_lm_head:  # a tied head may read Transpose(embedding)
        report.decline(lm_head, "lm_head kept float (the default; --int4-lm-head quantizes it)", op="MatMul")
    for t in find_targets(graph, None):
        if t.node == lm_head and not settings.int4_lm_head:
            continue
        elif t.weight is None:
            report.decline(t.node, "activation x activation MatMul: INT4 is weight-only", op=t.op)
        elif t.node in settings.exclude_nodes:
            report.decline(t.node, "excluded by the user (exclude_nodes): kept float", op=t.op)
        else:
            k = np.asarray(graph.tensors()[t.weight].values).shape[0]
            from trtcompile.quantize.blocks import block_for

            if block_for(k, settings.int4_block_size) is None:
                report.decline(t.node, f"K = {k} is not a multiple of 16: no INT4 block fits", op=t.op)
            else:
                targets.append(t)
    if not targets:
        ctx.warn("quantize_int4: no MatMul with a constant 2-D weight to quantize; the model stays float")
        report.note("nothing to quantize")
        return model
    fp32_model = _export(graph)

    rows, means, grams = {}, {}, {}
    if calibration and awq:  # RTN's per-layer report is the weight error: no calibration pass
        from trtcompile.quantize.calibrate import collect

        acts = sorted({t.activations[0] for t in targets})
        stats = _collect(collect, fp32_model, acts, calibration, gram=gptq)
        rows = {n: s["rows"] for n, s in stats.items()}
        means = {n: s["channel_mean"] for n, s in stats.items()}
        grams = {n: s["gram"] for n, s in stats.items() if s["gram"] is not None}
    graph = with_types(to_graph(fp32_model))
    choices = _search(graph, targets, rows, means, settings, report) if awq else {}
    _write(graph, targets, rows, choices, settings, report, grams)
    _half_gather_tables(graph, report)
    if graph.opset < 21:
        report.note(f"opset raised from {graph.opset} to 21 (block-quantized DequantizeLinear)")
        graph.opset = 21
    out = _export(graph)

    language_model = _is_language_model(ctx, model)
    feeds = evaluation if evaluation is not None else calibration
    reference = None
    if feeds:
        from trtcompile.quantize.accuracy import compare, run_all
        from trtcompile.graph.session import ort_session

        reference = run_all(ort_session(_copy(model)), feeds)
    if feeds:
        accuracy = compare(reference, run_all(ort_session(out), feeds), feeds, language_model)
        accuracy = {k: (round(v, 8) if isinstance(v, float) else v) for k, v in accuracy.items()}
        # Measured with FP32 activations; --int4-activations fp16 converts them in the next step.
        accuracy.update(int4_matmuls=len(targets), method=settings.int4_method, block_size=settings.int4_block_size,
                        symmetric=settings.int4_symmetric, activations="fp32",
                        target=settings.accuracy_target,
                        evaluation="held-out" if evaluation is not None else "calibration")
        report.extra["accuracy"] = accuracy
        summary = f"{accuracy['metric']} {accuracy['score']:.6f}"
        if "perplexity" in accuracy:
            summary += f", perplexity {accuracy['perplexity']:.4f} (FP32 {accuracy['perplexity_fp32']:.4f})"
        report.note(f"INT4 ({settings.int4_method}, block {settings.int4_block_size}, "
                    f"{'symmetric' if settings.int4_symmetric else 'asymmetric'}) on {len(targets)} MatMuls; {summary}")
        target = settings.accuracy_target
        if target is not None and accuracy["score"] < target:
            raise UserError(f"INT4 misses accuracy target {target}: {accuracy['metric']} is {accuracy['score']:.6f} "
                            f"({settings.int4_method}, block {settings.int4_block_size})",
                            hint="try --int4-method awq or gptq, a smaller --int4-block-size, no --int4-lm-head, "
                                 "or --precision int8/fp8")
    else:
        report.note(f"INT4 ({settings.int4_method}) on {len(targets)} MatMuls; accuracy not measured "
                    f"(no calibration data)")
    report.nodes_after = len(out.graph.node)
    return out


# ---------------------------------------------------------------------------------------------
def _search(graph: gs.Graph, targets, rows, means, settings: CalibrationSettings, report) -> dict:
    """AWQ's scale search per group of MatMuls reading one activation; applies the scales to the
    weights and folds 1/s into the producer. Returns {node: s} for the scaled MatMuls."""
    from trtcompile.quantize.awq import search_scale
    from trtcompile.quantize.blocks import block_for
    from trtcompile.quantize.smoothquant import _fold_inverse
    from trtcompile.quantize.value_fold import value_fold

    nodes = {n.name: n for n in graph.nodes}
    tensors = graph.tensors()
    groups: dict[str, list] = {}
    for t in targets:
        groups.setdefault(t.activations[0], []).append(t)
    # First every search (on the original weights), then every rewrite: folding 1/s of the down
    # projection into the up projection's columns commutes with the up projection's own row
    # scales and its INT4 blocks (each column has its own scales).
    plans = []
    for x_name, group in groups.items():
        x = rows.get(x_name)
        if x is None or means.get(x_name) is None:
            continue
        weights = [np.asarray(nodes[t.node].inputs[1].values, np.float32) for t in group]
        block = min(block_for(w.shape[0], settings.int4_block_size) for w in weights)
        mean = means[x_name]
        fold = None
        if _AWQ_VALUE_FOLD and {c.name for c in tensors[x_name].outputs} <= {t.node for t in group}:
            fold = value_fold(tensors[x_name], weights[0].shape[0])  # o_proj: scales tied per kv head
            mean = mean if fold is None else fold.tied(mean)
        alpha, s, err, rtn = search_scale(x[:_AWQ_ROWS], mean, weights, block, settings.int4_symmetric)
        plans.append((x_name, group, alpha, s, err, rtn, fold))
    scaled = {}
    for x_name, group, alpha, s, err, rtn, fold in plans:
        if alpha == 0.0:
            report.note(f"awq: {x_name!r} unscaled (alpha 0 is best: relative error {rtn:.3g})")
            continue
        if fold is not None:
            how = fold.fold((1.0 / s).astype(np.float32))
        else:
            how = _fold_inverse(graph, tensors[x_name], group, nodes, (1.0 / s).astype(np.float32),
                                allow_mul=_AWQ_EXPLICIT_MUL)
        if how is None:
            report.note(f"awq: {x_name!r} unscaled: 1/s does not fold into its producer "
                        f"(relative error {rtn:.3g}; {err:.3g} with an extra Mul)")
            continue
        for t in group:
            node = nodes[t.node]
            w = np.asarray(node.inputs[1].values, np.float32)
            node.inputs[1] = gs.Constant(f"{node.name}_weight_awq", (w * s[:, None]).astype(np.float32))
            scaled[t.node] = s
        report.note(f"awq alpha={alpha:.1f}: {x_name!r} -> {len(group)} MatMul(s), group error {rtn:.3g} -> {err:.3g}, "
                    f"1/s {how}")
    graph.cleanup().toposort()
    return scaled


# A float table read by Gathers alone at least this big is stored FP16 (the token embedding).
_HALF_TABLE_MIN_ELEMENTS = 1 << 20


def _half_gather_tables(graph: gs.Graph, report) -> None:
    """Store a big FP32 table that only Gathers read (the token embedding, once the LM head is INT4
    or untied) in FP16, with a Cast back to FP32 after each Gather: it is most of what an INT4
    package still holds in FP32 (SmolLM2: 113 of 180 MB). Standard ONNX (Gather on an FP16
    constant, Cast), which TensorRT imports as it is. A table the float LM head also reads (tied,
    the default) stays FP32: the head would otherwise cast all of it on every step."""
    for table in [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]:
        values = table.values
        if values.dtype != np.float32 or values.ndim != 2 or values.size < _HALF_TABLE_MIN_ELEMENTS:
            continue
        readers = list(table.outputs)
        if not readers or any(n.op != "Gather" or n.inputs[0] is not table
                              or int(n.attrs.get("axis", 0)) != 0 for n in readers):
            continue
        half = values.astype(np.float16)
        if not np.isfinite(half).all():
            report.note(f"{table.name} kept FP32: values beyond FP16's range")
            continue
        table.values = half
        for gather in readers:
            rows = gather.outputs[0]
            stored = gs.Variable(f"{rows.name}_fp16", dtype=np.float16, shape=rows.shape)
            gather.outputs[0] = stored
            graph.nodes.append(gs.Node("Cast", name=f"{gather.name}_to_fp32", attrs={"to": onnx.TensorProto.FLOAT},
                                       inputs=[stored], outputs=[rows]))
        report.note(f"{table.name} {list(values.shape)} stored FP16, read by {len(readers)} Gather(s) then cast "
                    f"to FP32 ({values.nbytes / 2**20:.0f} -> {half.nbytes / 2**20:.0f} MiB)")
    graph.toposort()


def _write(graph: gs.Graph, targets, rows, scaled: dict, settings: CalibrationSettings, report,
           grams: dict | None = None) -> None:
    """Quantize every target's (possibly AWQ-scaled) weight and put its DequantizeLinear in place:
    round to nearest after AWQ's clip search, or (gptq) GPTQ on the Gram matrix of its input."""
    from trtcompile.quantize.awq import relative_error, search_clip
    from trtcompile.quantize.blocks import (block_for, dequantize_blocks, fake_quantize, onnx_int4, packed_constant,
                                            quantize_blocks)

    nodes = {n.name: n for n in graph.nodes}
    symmetric = settings.int4_symmetric
    for t in targets:
        node = nodes[t.node]
        w = np.asarray(node.inputs[1].values, np.float32)
        k, n = w.shape
        block = block_for(k, settings.int4_block_size)
        s = scaled.get(t.node)
        x = rows.get(t.activations[0])
        x = None if x is None else x[:_AWQ_ROWS]
        clip = None
        gram = (grams or {}).get(t.activations[0])
        if settings.int4_method == "gptq" and gram is not None:
            q, scale, zero = _gptq_blocks(w, gram, s, block)
        else:
            if settings.int4_method in ("awq", "gptq") and x is not None:
                clip = search_clip(x if s is None else x / s, w, block, symmetric)
            q, scale, zero = quantize_blocks(w, block, symmetric, clip)
        detail = {"op": t.op, "dtype": "int4", "block_size": block, "K": k, "N": n,
                  "weight": t.weight, "symmetric": symmetric}
        if block != settings.int4_block_size:
            detail["block_note"] = f"K = {k} is not a multiple of {settings.int4_block_size}"
        if x is not None:
            original = w if s is None else w / s[:, None]
            effective = dequantize_blocks(q, scale, zero, block)
            effective = effective if s is None else effective / s[:, None]
            detail["error_rtn"] = round(relative_error(x, original, fake_quantize(original, block, symmetric)), 8)
            detail["error"] = round(relative_error(x, original, effective), 8)
        else:
            detail["weight_error"] = round(float(np.linalg.norm(w - fake_quantize(w, block, symmetric))
                                                 / max(np.linalg.norm(w), 1e-30)), 8)
        if s is not None:
            detail["awq_scaled"] = True
        if clip is not None:
            detail["clipped_blocks"] = int((clip < 1.0).sum())
        report.match(t.node, **detail)
        inputs = [packed_constant(f"{node.name}_weight_int4", onnx_int4(q, symmetric)),
                  gs.Constant(f"{node.name}_weight_int4_scale", scale)]
        if zero is not None:
            inputs.append(packed_constant(f"{node.name}_weight_int4_zero_point", onnx_int4(zero, False)))
        out = gs.Variable(f"{node.name}_weight_dequantized", dtype=np.float32, shape=[k, n])
        graph.nodes.append(gs.Node("DequantizeLinear", f"{node.name}_weight_DequantizeLinear",
                                   {"axis": 0, "block_size": block}, inputs=inputs, outputs=[out]))
        node.inputs[1] = out
    graph.cleanup().toposort()


def _gptq_blocks(w: np.ndarray, gram: np.ndarray, s: np.ndarray | None, block: int):
    """Symmetric INT4 blocks rounded by GPTQ. With AWQ scales s the weight is diag(s) W and its
    input X / s, so the Gram matrix becomes diag(1/s) X^T X diag(1/s)."""
    from trtcompile.quantize.blocks import INT4_MAX, INT4_MIN
    from trtcompile.quantize.gptq import gptq_round

    if s is not None:
        inv = 1.0 / np.asarray(s, np.float64)
        gram = gram * inv[:, None] * inv[None, :]
    q, scale = gptq_round(w, gram, INT4_MAX, group=block, grid=lambda v: np.clip(np.rint(v), INT4_MIN, INT4_MAX),
                          damp=_GPTQ_DAMP, act_order=_GPTQ_ACT_ORDER)
    return q.astype(np.int8), scale, None


def _gemms_to_matmuls(graph: gs.Graph) -> int:
    """Gemm(A, B[, C]) with a constant 2-D B, transA=0, alpha=beta=1 -> MatMul(A, B as [K, N]) (+ C)."""
    count = 0
    for node in list(graph.nodes):
        if node.op != "Gemm" or not isinstance(node.inputs[1], gs.Constant):
            continue
        a = node.attrs
        if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or a.get("beta", 1.0) != 1.0:
            continue
        w = np.asarray(node.inputs[1].values)
        if w.ndim != 2:
            continue
        if a.get("transB", 0):
            w = w.T.copy()
        y = node.outputs[0]
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] is not None and node.inputs[2].name else None
        product = gs.Variable(f"{node.name}_matmul_out", dtype=y.dtype, shape=y.shape) if bias is not None else y
        node.outputs = []
        graph.nodes.append(gs.Node("MatMul", node.name, inputs=[node.inputs[0], gs.Constant(f"{node.name}_weight_kn", w)],
                                   outputs=[product]))
        if bias is not None:
            graph.nodes.append(gs.Node("Add", f"{node.name}_bias", inputs=[product, bias], outputs=[y]))
        node.inputs = []
        node.name = f"{node.name}_replaced"
        count += 1
    graph.cleanup().toposort()
    return count


def _collect(collect, model, tensors, feeds, gram: bool = False):
    from trtcompile.quantize.int8 import _collect as guarded

    return guarded(collect, model, tensors, feeds, sample_rows=_AWQ_ROWS * 4, channel_mean=True, gram=gram,
                   description="awq statistics")


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _check_int4_settings(settings: CalibrationSettings) -> None:
    if settings.int4_method not in INT4_METHODS:
        raise UserError(f"INT4 method {settings.int4_method!r} is not one of {list(INT4_METHODS)}",
                        hint="use --int4-method awq (activation-aware, needs --calibration-data), gptq or rtn")
    if settings.int4_method == "gptq" and not settings.int4_symmetric:
        raise UserError("--int4-method gptq rounds symmetric INT4 only, but --int4-asymmetric is set",
                        hint="drop --int4-asymmetric (TensorRT takes symmetric INT4), or use --int4-method awq")
    if settings.int4_block_size not in (16, 32, 64, 128):
        raise UserError(f"INT4 block size {settings.int4_block_size} is not 16, 32, 64 or 128",
                        hint="use --int4-block-size 128 (TensorRT's fastest) or 64/32 for more accuracy")
    if settings.int4_activations not in ("fp16", "fp32"):
        raise UserError(f"INT4 activation precision {settings.int4_activations!r} is not fp16 or fp32",
                        hint="use --int4-activations fp16 (TensorRT) or fp32")
    from trtcompile.quantize.int8 import check_accuracy_target

    check_accuracy_target(settings)
