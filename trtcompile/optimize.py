"""The optimize stage: fusion PIPELINE, then precision (FP16/BF16 casts, or a quantization step:
INT8/FP8 Q/DQ or INT4 weight-only, quantize/step.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from trtcompile.passes import ModelInfo, PassContext, PassReport, run_pipeline
from trtcompile.settings import CalibrationSettings, OptimizeSettings


@dataclass
class OptimizeResult:
    model: onnx.ModelProto
    reports: list[PassReport] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def optimize(model: onnx.ModelProto, settings: OptimizeSettings,
             calibration: CalibrationSettings | None = None, on_pass=None) -> OptimizeResult:
    from trtcompile.export import read_metadata, write_metadata
    from trtcompile.onnx_io import to_graph, to_model

    meta = read_metadata(model)
    ctx = PassContext(settings=settings, model=ModelInfo.from_config(meta["source"].get("config") or {}))
    graph, reports = run_pipeline(to_graph(model), ctx, on_pass=on_pass)

    if settings.precision in ("fp16", "bf16"):
        from trtcompile.passes.precision import precision_passes

        graph, more = run_pipeline(graph, ctx, passes=precision_passes(settings), on_pass=on_pass)
        reports += more
    # Quantization is a pipeline step too: run_pipeline owns its report (decisions, accuracy).
    from trtcompile.quantize.step import quantization_steps, wants_fp16_rest

    steps = quantization_steps(settings, calibration, meta)
    if wants_fp16_rest(settings, calibration):
        from trtcompile.passes.convert_fp16 import convert_fp16

        steps.append(convert_fp16)
    if steps:
        graph, more = run_pipeline(graph, ctx, passes=steps, on_pass=on_pass)
        reports += more
    # Last, after precision and quantization: it moves each static-cache Attention into the branches
    # of an If, where no other pass looks.
    from trtcompile.passes.read_cache_in_place import read_cache_in_place

    graph, more = run_pipeline(graph, ctx, passes=[read_cache_in_place], on_pass=on_pass)
    reports += more
    out = to_model(graph)

    # Passes rebuild the model; the stage metadata must survive them, with this stage's report
    # (`build` of this file writes it into the package, as `compile` does).
    meta["precision"] = settings.precision
    meta.update(stage="optimize", passes=[r.to_dict() for r in reports], warnings=list(ctx.warnings))
    write_metadata(out, meta)
    return OptimizeResult(out, reports, ctx.warnings)

