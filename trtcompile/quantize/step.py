"""Quantization as a step of the pass pipeline: `quantization_steps(...)` gives the optimize stage a
pass (`graph, ctx -> graph`) per quantized precision, which `run_pipeline` runs like any other:
it makes the step's PassReport, times it, counts nodes and checks the graph; the quantizer writes
its decisions and accuracy into that same report.

    int8  quantize_int8  calibrated INT8 Q/DQ on MatMul/Gemm inputs (needs --calibration-data)
    fp8   quantize_fp8   the same with E4M3 Q/DQ (needs --calibration-data)
    int4  quantize_int4  INT4 weight-only block DQ (AWQ/GPTQ need --calibration-data; RTN does not)

Calibration data is loaded when the step runs, split into calibration batches and a held-out
quarter that the accuracy gate measures on.
"""

from __future__ import annotations

from pathlib import Path

from trtcompile.errors import UserError
from trtcompile.settings import CalibrationSettings, OptimizeSettings

QUANTIZED_PRECISIONS = ("int8", "fp8", "int4")


def quantization_steps(settings: OptimizeSettings, calibration: CalibrationSettings | None, meta: dict) -> list:
    """[] for float precisions, else the one quantization pass for `settings.precision`."""
    precision = settings.precision
    if precision not in QUANTIZED_PRECISIONS:
        return []
    calibration = calibration or CalibrationSettings()
    needs_data = precision != "int4" or calibration.int4_method != "rtn"
    if needs_data and calibration.data is None:
        what = f"--int4-method {calibration.int4_method}" if precision == "int4" else f"--precision {precision}"
        raise UserError(f"{what} needs calibration data",
                        hint="pass --calibration-data FILE (.npz of inputs, or a text file for models with a "
                             "tokenizer; samples/calibration.txt is one)"
                             + (", or use --int4-method rtn" if precision == "int4" else ""))

    def step(graph, ctx):
        from trtcompile.onnx_io import to_graph, to_model

        feeds, held_out = calibration_feeds(meta, calibration) if calibration.data is not None else (None, None)
        model = to_model(graph)
        if precision == "int4":
            from trtcompile.quantize.int4 import quantize_int4

            out = quantize_int4(model, feeds, calibration, ctx, evaluation=held_out)
        else:
            from trtcompile.quantize.int8 import quantize_int8
            from trtcompile.quantize.qdq import FP8, INT8

            out = quantize_int8(model, feeds, calibration, ctx, evaluation=held_out,
                                fmt=FP8 if precision == "fp8" else INT8)
        return to_graph(out)

    step.__name__ = f"quantize_{precision}"
    return [step]


def wants_fp16_rest(settings: OptimizeSettings, calibration: CalibrationSettings | None) -> bool:
    """Whether the quantized graph's float part converts to FP16 in a step after quantization
    (INT4's activations; INT8/FP8 convert their rest themselves and re-measure accuracy)."""
    calibration = calibration or CalibrationSettings()
    return settings.precision == "int4" and calibration.int4_activations == "fp16"


def calibration_feeds(meta: dict, calibration: CalibrationSettings) -> tuple[list[dict], list[dict] | None]:
    """Calibration batches from the user's data, with a held-out quarter for the accuracy gate."""
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
