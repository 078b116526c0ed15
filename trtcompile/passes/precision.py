"""Which precision passes run after the fusion PIPELINE, by `OptimizeSettings.precision`.

FP16/BF16 are graph rewrites (passes); INT8 needs calibration data and lives in
`trtcompile.quantize.quantize_int8`, which the optimize stage calls instead.
"""

from __future__ import annotations

from trtcompile.passes.convert_fp16 import convert_bf16, convert_fp16


def precision_passes(settings) -> list:
    """The passes for `settings.precision`: [] for fp32 and int8, one conversion for fp16/bf16."""
    return {"fp16": [convert_fp16], "bf16": [convert_bf16]}.get(settings.precision, [])
