"""Which precision passes run after the fusion PIPELINE, by `OptimizeSettings.precision`.

FP16/BF16 are graph rewrites (passes); INT8/FP8/INT4 need calibration data and live in
`trtcompile.quantize` (quantize/step.py makes each a pipeline step).
"""

from __future__ import annotations

from trtcompile.passes.convert_fp16 import convert_bf16, convert_fp16


def precision_passes(settings) -> list:
    """The passes for `settings.precision`: [] for fp32 and the quantized ones, one conversion for fp16/bf16."""
    return {"fp16": [convert_fp16], "bf16": [convert_bf16]}.get(settings.precision, [])
