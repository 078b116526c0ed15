"""Quantization: INT8/FP8 Q/DQ calibrated in ONNX Runtime on CPU, INT4 weight-only block DQ.

`quantization_steps` (step.py) makes them steps of the optimize stage's pass pipeline;
`quantize_int8` (int8.py, FP8 with `fmt=FP8`), `quantize_fp8` and `quantize_int4` (int4.py) are
the quantizers; `load_calibration_data` (data.py) turns a user's .npz or text file into input
batches. Heavy imports stay inside them.
"""

from __future__ import annotations


def quantize_int8(*args, **kwargs):
    from trtcompile.quantize.int8 import quantize_int8 as impl

    return impl(*args, **kwargs)


def quantize_fp8(*args, **kwargs):
    from trtcompile.quantize.int8 import quantize_int8 as impl
    from trtcompile.quantize.qdq import FP8

    return impl(*args, fmt=FP8, **kwargs)


def quantize_int4(*args, **kwargs):
    from trtcompile.quantize.int4 import quantize_int4 as impl

    return impl(*args, **kwargs)


def load_calibration_data(*args, **kwargs):
    from trtcompile.quantize.data import load_calibration_data as impl

    return impl(*args, **kwargs)


__all__ = ["load_calibration_data", "quantize_fp8", "quantize_int4", "quantize_int8"]
