"""INT8 explicit quantization: calibration in ONNX Runtime on CPU, Q/DQ placed for TensorRT.

`quantize_int8` (int8.py) is the entry point the optimize stage calls; `load_calibration_data`
(data.py) turns a user's .npz or text file into input batches. Heavy imports stay inside them.
"""

from __future__ import annotations


def quantize_int8(*args, **kwargs):
    from trtcompile.quantize.int8 import quantize_int8 as impl

    return impl(*args, **kwargs)


def load_calibration_data(*args, **kwargs):
    from trtcompile.quantize.data import load_calibration_data as impl

    return impl(*args, **kwargs)


__all__ = ["load_calibration_data", "quantize_int8"]
