"""The optimize stage: fusion PIPELINE, then precision (FP16/BF16 casts, or calibrated INT8 Q/DQ)."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from trtcompile.errors import UserError
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
    out = to_model(graph)

    if settings.precision == "int8":
        calibration = calibration or CalibrationSettings()
        if calibration.data is None:
            raise UserError("--precision int8 needs calibration data",
                            hint="pass --calibration-data FILE (.npz of inputs, or a text file for models "
                                 "with a tokenizer; samples/calibration.txt is one)")
        from trtcompile.quantize import quantize_int8

        feeds, held_out = calibration_feeds(meta, calibration)
        if on_pass is not None:
            on_pass("quantize_int8")
        ctx.report = PassReport("quantize_int8", nodes_before=len(out.graph.node))
        out = quantize_int8(out, feeds, calibration, ctx, evaluation=held_out)
        ctx.report.nodes_after = len(out.graph.node)
        reports.append(ctx.report)

    # Passes rebuild the model; the stage metadata must survive them, with this stage's report
    # (`build` of this file writes it into the package, as `compile` does).
    meta["precision"] = settings.precision
    meta.update(stage="optimize", passes=[r.to_dict() for r in reports], warnings=list(ctx.warnings))
    write_metadata(out, meta)
    return OptimizeResult(out, reports, ctx.warnings)


def calibration_feeds(meta: dict, calibration: CalibrationSettings) -> tuple[list[dict], list[dict] | None]:
    """Calibration batches from the user's data, with a held-out quarter for the accuracy gate."""
    from pathlib import Path

    from trtcompile.profiles import parse_profile
    from trtcompile.quantize.data import load_calibration_data
    from trtcompile.runtime.shapes import TensorSpec

    profile = parse_profile(meta["profile"], origin=meta.get("profile_origin", "profile"))
    specs = [TensorSpec(n, meta["dtypes"][n], s) for n, s in meta["shapes"].items()]
    tok = meta["source"].get("tokenizer_dir")
    batches = load_calibration_data(Path(calibration.data), specs, profile.buckets,
                                    Path(tok) if tok else None, calibration.num_samples)
    if len(batches) >= 4:
        cut = max(1, len(batches) // 4)
        return batches[:-cut], batches[-cut:]
    return batches, None
