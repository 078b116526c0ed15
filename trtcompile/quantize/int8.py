"""INT8 and FP8 explicit quantization: calibrate, place Q/DQ, measure, back off sensitive layers.

    FP32 graph ──(SmoothQuant, optional)──> calibrate in ONNX Runtime ──> ranges (minmax |
    percentile | entropy) ──> Q/DQ on every MatMul/Gemm ──> accuracy vs FP32 on held-out data
        └─ below --accuracy-target: rank layers by sensitivity (each quantized alone; LMs by the
           KL of their next-token distribution), bisect for the fewest FP32 layers that meet the
           target, then try a greedy smaller set; none does -> UserError. Every subset is
           measured in one switchable ONNX Runtime session (switchable.py).

FP8 (E4M3, `fmt=FP8`) is the same flow with a different quantized type: per-channel weights and
per-tensor activations with scales amax/448, for Ada/Hopper TensorRT. SmoothQuant's "auto" search
is INT8-specific, so FP8 runs without it unless an explicit alpha is given: E4M3 keeps 3 mantissa
bits at any magnitude, so migration only helps values a large amax pushes into its subnormals, and
on SmolLM2-135M it cost FP8 accuracy (activations-only top-1 vs FP32 0.915 unsmoothed, 0.898 at
alpha 0.5, 0.842 at 0.8; migrating only the outlier channels: 0.898-0.912). A language model's LM
head stays float unless `fp8_lm_head` (ModelOpt's FP8 recipe does the same; on SmolLM2-135M the
head alone in FP8 cost 6.5 points of top-1 agreement with FP32).

The decisions (each MatMul's range and whether it is quantized, each kept layer and why) and the
final accuracy go into `ctx.report` (the step's PassReport, "quantize_int8" / "quantize_fp8",
accuracy in `extra`).
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtcompile.errors import UserError
from trtcompile.onnx_io import to_graph
from trtcompile.graph.context import PassContext
from trtcompile.graph.report import PassReport
from trtcompile.settings import CALIBRATION_METHODS, WEIGHT_ROUNDINGS, CalibrationSettings

log = logging.getLogger("trtcompile.quantize")
_SENSITIVITY_BATCHES = 8
_GREEDY_POOL = 8  # candidates the greedy fallback search tries at each step
_GREEDY_EVALUATIONS = 96  # at most this many subsets measured by the greedy search
_AUTO_ROWS = 2048  # activation rows kept per tensor for SmoothQuant's alpha search


def quantize_int8(model: onnx.ModelProto, calibration: list[dict[str, np.ndarray]],
                  settings: CalibrationSettings, ctx: PassContext,
                  evaluation: list[dict[str, np.ndarray]] | None = None, fmt=None) -> onnx.ModelProto:
    """The FP32 `model` with calibrated Q/DQ on its MatMul/Gemm inputs; report in `ctx.report`."""
    from trtcompile.graph.session import ort_session
    from trtcompile.graph.types import with_types
    from trtcompile.quantize.accuracy import compare, run_all
    from trtcompile.quantize.calibrate import collect
    from trtcompile.quantize.qdq import INT8, find_targets, insert_qdq, lm_head
    from trtcompile.quantize.ranges import activation_amax
    from trtcompile.quantize.smoothquant import smooth

    fmt = fmt or INT8
    label = fmt.name.upper()
    report = step_report(ctx, f"quantize_{fmt.name}", model)
    _check_settings(settings)
    language_model = _is_language_model(ctx, model)
    float_head = fmt is not INT8 and language_model and not settings.fp8_lm_head
    graph = prepared_graph(model, calibration, evaluation, settings, report, float_lm_head=float_head)
    head = lm_head(graph) if float_head else None
    keep_float = {head: "LM head kept float (as in ModelOpt's FP8 recipe; --fp8-lm-head quantizes it)"} if head else {}
    targets = find_targets(graph, report, settings.int8_attention, keep_float)
    excluded = [t for t in targets if t.node in settings.exclude_nodes]
    for t in excluded:
        report.decline(t.node, "excluded by the user (exclude_nodes): kept FP32", op=t.op)
    targets = [t for t in targets if t.node not in settings.exclude_nodes]
    if not targets:
        ctx.warn(f"quantize_{fmt.name}: no MatMul/Gemm with a constant weight to quantize; the model stays FP32")
        report.note("nothing to quantize")
        return model

    smoothquant = settings.smoothquant_alpha
    if fmt is not INT8 and smoothquant == "auto":
        report.note(f"smoothquant 'auto' searches INT8 error; {label} runs without it (migration lowered FP8 "
                    "accuracy on SmolLM2; give a number to force it)")
        smoothquant = None
    if smoothquant is not None:
        acts = sorted({t.activations[0] for t in targets if t.weight is not None})
        auto = smoothquant == "auto"
        stats = _collect(collect, _export(graph), acts, calibration, per_channel=True,
                         sample_rows=_AUTO_ROWS if auto else 0, description="smoothquant statistics")
        graph = smooth(graph, targets, {n: s["channel_amax"] for n, s in stats.items()},
                       smoothquant, report,
                       samples={n: s["rows"] for n, s in stats.items()} if auto else None)
        keep = {t.node for t in targets}
        targets = [t for t in find_targets(graph, None, settings.int8_attention) if t.node in keep]
    fp32_model = _export(graph)

    acts = sorted({a for t in targets for a in t.activations})
    mse = settings.method == "mse"
    gptq = settings.weight_rounding == "gptq"
    stats = _collect(collect, fp32_model, acts, calibration, description=f"calibrating ({settings.method})",
                     sample_rows=_AUTO_ROWS if mse else 0, gram=gptq)
    if mse:
        from trtcompile.quantize.ranges import search_amax

        weights = _weights_by_activation(to_graph(fp32_model), targets)
        amax = {n: search_amax(s["hist"], s["rows"], weights.get(n, []), fmt) for n, s in stats.items()}
    else:
        amax = {n: activation_amax(s["hist"], settings.method, settings.percentile) for n, s in stats.items()}

    rounded = _gptq_weights(to_graph(fp32_model), targets, stats, fmt, report) if gptq else None
    del stats  # the Gram matrices (a GB on SmolLM2) are done with before the gate's sessions

    eval_feeds = evaluation if evaluation is not None else calibration
    if evaluation is None:
        report.note("accuracy measured on the calibration data (no held-out evaluation data given)")
    reference = run_all(ort_session(_copy(model)), eval_feeds)

    def build(subset) -> onnx.ModelProto:
        return _export(insert_qdq(to_graph(fp32_model), subset, amax, fmt, rounded))

    switchable = None  # the gate's one session for every subset, once it searches

    def measure(subset, feeds=eval_feeds, ref=reference) -> dict:
        session = switchable.select(subset) if switchable is not None else ort_session(build(subset))
        return compare(ref, run_all(session, feeds), feeds, language_model)

    accuracy = measure(targets)
    quantized, kept_reason = list(targets), {}
    target = settings.accuracy_target
    if target is not None and accuracy["score"] < target:
        from trtcompile.quantize.switchable import SwitchableSession

        log.info(label + " %s %.5f below target %.5f: ranking layers by sensitivity",
                 accuracy["metric"], accuracy["score"], target)
        switchable = SwitchableSession(to_graph(fp32_model), targets, amax, fmt, rounded)
        few = eval_feeds[:_SENSITIVITY_BATCHES]
        few_ref = reference[:_SENSITIVITY_BATCHES]
        sensitivity = {}
        for t in targets:
            alone = measure([t], few, few_ref)
            # LMs: KL of the next-token distribution first (top-1 over a few hundred held-out
            # tokens rarely moves for one layer); encoders: the score, then the cosine.
            sensitivity[t.node] = ((alone["kl"], 1.0 - alone["score"]) if language_model else
                                   (1.0 - alone["score"], 1.0 - alone["cosine_mean"], alone["max_abs"]))
        order = sorted(targets, key=lambda t: sensitivity[t.node], reverse=True)
        what = "KL alone" if language_model else "1 - cosine alone"
        report.extra["sensitivity"] = {t.node: round(sensitivity[t.node][0 if language_model else 1], 8) for t in order}
        tries = {0: accuracy}

        def ok(k: int) -> bool:
            if k not in tries:
                tries[k] = measure(order[k:])
            return tries[k]["score"] >= target

        n = len(order)
        if not ok(n - 1):
            best = tries[n - 1]
            raise UserError(
                f"{label} cannot reach accuracy target {target} ({accuracy['metric']}): with all {n} MatMuls "
                f"in {label} it is {accuracy['score']:.7f}, and even with only the least sensitive one "
                f"({order[-1].node!r}) in {label} it is {best['score']:.7f}",
                hint="lower --accuracy-target, try another --calibration-method or --smoothquant-alpha, "
                     "or use --precision fp16")
        lo, hi = 0, n - 1
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if ok(mid):
                hi = mid
            else:
                lo = mid
        accuracy = tries[hi]
        # The bisection's points, most quantized first: what each further quantized layer costs, for
        # a user weighing a lower target (the manifest keeps it with the sensitivities).
        report.extra["fallback_curve"] = [{"quantized": n - k, "score": round(tries[k]["score"], 6)}
                                          for k in sorted(tries)]
        kept = order[:hi]
        how = "most sensitive layers first"
        evaluations = len(tries) + n
        if hi > 1:
            # Layers interact: a different, smaller set may do. Greedy, among the most sensitive.
            pool = order[:min(max(_GREEDY_POOL, 2 * hi), 2 * _GREEDY_POOL)]
            fewer = _greedy_fallback(targets, pool, hi - 1, target, measure)
            evaluations += fewer[2]
            if fewer[0] is not None:
                kept, accuracy, how = fewer[0], fewer[1], "greedy, each step the layer that helps most"
        quantized = [t for t in targets if t not in kept]
        switchable = None  # its float and quantized weights side by side: free them before the final build
        for t in kept:
            kept_reason[t.node] = (f"kept {settings.float_precision.upper()}: {how} ({what} {sensitivity[t.node][0 if language_model else 1]:.3g}) "
                                   f"until {accuracy['metric']} >= {target}")
        report.note(f"fallback: {len(kept)} of {n} MatMuls kept {settings.float_precision.upper()} to reach {accuracy['metric']} "
                    f"{accuracy['score']:.5f} >= {target} ({evaluations} evaluations)")

    final = build(quantized)
    if settings.float_precision == "fp16":
        final, accuracy = _rest_to_fp16(final, ctx, report, eval_feeds, reference, language_model)
        if target is not None and accuracy["score"] < target:
            ctx.warn(f"quantize_{fmt.name}: with the non-{label} layers in FP16, {accuracy['metric']} is "
                     f"{accuracy['score']:.5f}, below the target {target} that {label}+FP32 met")
    for t in targets:
        if t.node in kept_reason:
            report.decline(t.node, kept_reason[t.node], op=t.op)
        else:
            report.match(t.node, op=t.op, dtype=fmt.name, activations={a: _amax_dict(amax[a], fmt) for a in t.activations},
                         weight=t.weight, weight_axis=t.weight_axis, method=settings.method)
    matmuls = sum(1 for n in final.graph.node if n.op_type in ("MatMul", "Gemm"))
    accuracy = {k: (round(v, 8) if isinstance(v, float) else v) for k, v in accuracy.items()}
    accuracy.update({f"{fmt.name}_matmuls": len(quantized)}, quantized_matmuls=len(quantized), matmuls=matmuls,
                    method=settings.method, weight_rounding=settings.weight_rounding,
                    float_precision=settings.float_precision,
                    smoothquant_alpha=smoothquant, target=target,
                    evaluation="held-out" if evaluation is not None else "calibration")
    report.extra["accuracy"] = accuracy
    report.nodes_after = len(final.graph.node)
    report.note(f"{label} on {len(quantized)} of {matmuls} MatMul/Gemm; {accuracy['metric']} {accuracy['score']:.6f}, "
                f"worst cosine {accuracy['cosine_min']:.6f}, max abs {accuracy['max_abs']:.4g}")
    return final


def prepared_graph(model: onnx.ModelProto, calibration, evaluation, settings: CalibrationSettings,
                   report: PassReport, float_lm_head: bool = False) -> gs.Graph:
    """The graph to quantize, once the feeds are checked against the model: typed, and with a tied
    embedding's Transpose(constant) weight made a constant of its own (so it can be quantized),
    unless it is the LM head and that stays float (then the embedding stays one initializer)."""
    from trtcompile.graph.types import with_types
    from trtcompile.quantize.qdq import lm_head, materialize_transposed_weights

    if calibration is not None:
        _check_feeds(model, calibration, "calibration data", settings)
    if evaluation is not None:
        _check_feeds(model, evaluation, "evaluation data", settings)
    graph = with_types(to_graph(model))
    tied = materialize_transposed_weights(graph, skip={lm_head(graph)} if float_lm_head else ())
    if tied:
        report.note(f"{tied} read their weight as Transpose(constant) (a tied embedding): quantized from a copy")
    return graph


def _greedy_fallback(targets, pool, budget: int, target: float, measure):
    """(kept, accuracy, evaluations): at most `budget` layers of `pool` kept float, chosen one at
    a time by the score they give, that reach `target`; kept None when none does."""
    kept: list = []
    evaluations = 0
    for _ in range(budget):
        if evaluations + len(pool) > _GREEDY_EVALUATIONS:
            break  # hundreds of MatMuls (an LLM): bisection's set stands
        best = None
        for candidate in pool:
            if candidate in kept:
                continue
            trial = kept + [candidate]
            accuracy = measure([t for t in targets if t not in trial])
            evaluations += 1
            if best is None or _rank(accuracy) > _rank(best[1]):
                best = (trial, accuracy)
        if best is None:
            break
        kept = best[0]
        if best[1]["score"] >= target:
            return kept, best[1], evaluations
    return None, None, evaluations


def _rank(accuracy: dict) -> tuple:
    """Higher is better: the score, then (LMs, where top-1 ties are common) the lower KL."""
    return accuracy["score"], -accuracy.get("kl", 0.0)


def _gptq_weights(graph: gs.Graph, targets, stats: dict, fmt, report: PassReport) -> dict:
    """Each weight rounded by GPTQ on its activation's Gram matrix: name -> (values, scale)."""
    from trtcompile.quantize.gptq import gptq_round

    tensors = graph.tensors()
    rounded = {}
    gains = []
    for t in targets:
        if t.weight is None or t.weight in rounded:
            continue
        gram = stats[t.activations[0]]["gram"]
        w = np.asarray(tensors[t.weight].values, np.float32)
        w_kn = w if t.weight_axis == 1 else w.T
        if gram is None or gram.shape[0] != w_kn.shape[0]:
            report.note(f"gptq: {t.node!r} rounded to nearest (no Gram matrix of its input)")
            continue
        grid = None if fmt.name == "int8" else (lambda v: fmt.cast(v).astype(np.float64))
        q, scale = gptq_round(w_kn, gram, fmt.qmax, grid=grid)
        values = fmt.cast(q if t.weight_axis == 1 else q.T)
        rounded[t.weight] = (values, scale)
        gains.append(_gram_error(w_kn, q * scale[None, :], gram) /
                     max(_gram_error(w_kn, _nearest(w_kn, fmt), gram), 1e-30))
    if gains:
        report.note(f"gptq: {len(rounded)} weights rounded by GPTQ; calibration output error "
                    f"{np.median(gains):.2f}x round-to-nearest's (median)")
    return rounded


def _gram_error(w: np.ndarray, w_q: np.ndarray, gram: np.ndarray) -> float:
    """||X (W - W_q)||^2 from X^T X."""
    d = np.asarray(w, np.float64) - w_q
    return float(((gram @ d) * d).sum())


def _nearest(w: np.ndarray, fmt) -> np.ndarray:
    from trtcompile.quantize.qdq import quantize_weight

    q, scale = quantize_weight(w, 1, fmt)
    return q.astype(np.float64) * scale[None, :]


def _weights_by_activation(graph: gs.Graph, targets) -> dict[str, list[np.ndarray]]:
    """Each quantized activation's weights as [K, N] (what its Q/DQ error is measured through)."""
    tensors = graph.tensors()
    out: dict[str, list[np.ndarray]] = {}
    for t in targets:
        if t.weight is not None:
            w = np.asarray(tensors[t.weight].values, np.float32)
            out.setdefault(t.activations[0], []).append(w if t.weight_axis == 1 else w.T)
    return out


def _rest_to_fp16(model, ctx: PassContext, report: PassReport, feeds, reference, language_model):
    """Everything not INT8 to FP16 (convert_fp16 on the Q/DQ graph, its FP32 islands kept)."""
    from dataclasses import replace

    from trtcompile.graph.session import ort_session
    from trtcompile.onnx_io import to_graph
    from trtcompile.passes.convert_fp16 import convert_float  # the FP16 pass itself; see tests/test_layering.py
    from trtcompile.quantize.accuracy import compare, run_all

    sub = PassContext(settings=replace(ctx.settings, precision="int8"), model=ctx.model,
                      report=PassReport("convert_fp16"))
    graph = convert_float(to_graph(model), sub, np.float16, sample_feeds=feeds[:2])
    ctx.warnings.extend(sub.warnings)
    out = _export(graph)
    report.notes.extend(f"fp16 rest: {note}" for note in sub.report.notes)
    report.extra["fp16_kept_fp32"] = sub.report.declined
    accuracy = compare(reference, run_all(ort_session(out), feeds), feeds, language_model)
    return out, accuracy


def _amax_dict(amax: float, fmt) -> dict:
    from trtcompile.quantize.qdq import activation_scale

    return {"amax": round(float(amax), 6), "scale": activation_scale(amax, fmt)}


def step_report(ctx: PassContext, name: str, model: onnx.ModelProto) -> PassReport:
    """The report of the pipeline step now running (run_pipeline made it), or a new one when a
    quantizer is called on its own."""
    if ctx.report.name != name:
        ctx.report = PassReport(name, nodes_before=len(model.graph.node))
    return ctx.report


def _collect(collect, model, tensors, feeds, **kw):
    try:
        return collect(model, tensors, feeds, **kw)
    except Exception as exc:  # noqa: BLE001 - ORT's errors on bad feeds are the user's to fix
        if type(exc).__module__.startswith("onnxruntime"):
            raise UserError(f"calibration data does not run through the model: {str(exc).splitlines()[0]}",
                            hint="check each input's shape and values against the model's inputs") from exc
        raise


def _export(graph: gs.Graph) -> onnx.ModelProto:
    from trtcompile.onnx_io import to_model

    return to_model(graph.cleanup().toposort())


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _is_language_model(ctx: PassContext, model: onnx.ModelProto) -> bool:
    return bool(ctx.model.is_decoder) or any("logit" in o.name for o in model.graph.output)


def _check_settings(settings: CalibrationSettings) -> None:
    if settings.method not in CALIBRATION_METHODS:
        raise UserError(f"calibration method {settings.method!r} is not one of {list(CALIBRATION_METHODS)}",
                        hint="use --calibration-method minmax, percentile, entropy or mse")
    if not 0 < settings.percentile <= 100:
        raise UserError(f"calibration percentile {settings.percentile} is outside (0, 100]",
                        hint="use e.g. 99.99")
    alpha = settings.smoothquant_alpha
    if alpha is not None and alpha != "auto" and not (isinstance(alpha, (int, float)) and 0 <= alpha <= 1):
        raise UserError(f"SmoothQuant alpha {settings.smoothquant_alpha} is outside [0, 1]",
                        hint="use --smoothquant-alpha 0.85 (0.5-0.95 are typical), or 'auto' to search per layer")
    if settings.weight_rounding not in WEIGHT_ROUNDINGS:
        raise UserError(f"weight rounding {settings.weight_rounding!r} is not one of {list(WEIGHT_ROUNDINGS)}",
                        hint="use --weight-rounding nearest or gptq")
    if settings.float_precision not in ("fp32", "fp16"):
        raise UserError(f"float precision {settings.float_precision!r} for the non-INT8 layers is not fp32 or fp16",
                        hint="use fp16 (fastest in TensorRT) or fp32")
    check_accuracy_target(settings)


def check_accuracy_target(settings: CalibrationSettings) -> None:
    """The gate's target, for library callers (the CLI checks it in preflight)."""
    if settings.accuracy_target is not None and not 0 < settings.accuracy_target <= 1:
        raise UserError(f"accuracy target {settings.accuracy_target} is outside (0, 1]",
                        hint="give a mean cosine or top-1 agreement such as 0.999")


def _check_feeds(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], what: str,
                 settings: CalibrationSettings) -> None:
    source = f" from {str(settings.data)!r}" if settings.data else ""
    if not feeds:
        raise UserError(f"{what}{source} is empty: INT8 needs samples to calibrate on",
                        hint="pass --calibration-data with a .npz of inputs or a text file (one sentence per line)")
    inits = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in inits}
    for k, feed in enumerate(feeds):
        missing = sorted(set(inputs) - set(feed))
        if missing:
            raise UserError(f"{what}{source}: batch {k} has no input {missing[0]!r} (it has {sorted(feed)})",
                            hint=f"give every model input: {sorted(inputs)}")
        for name, array in feed.items():
            if name not in inputs:
                continue
            elem = inputs[name].type.tensor_type.elem_type
            want = onnx.helper.tensor_dtype_to_np_dtype(elem)
            if np.asarray(array).dtype != want:
                raise UserError(f"{what}{source}: input {name!r} is {np.asarray(array).dtype}, the model takes {want}",
                                hint=f"convert it with .astype(np.{want})")
