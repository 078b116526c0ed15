"""Block-wise INT4 weight quantization (numpy), the numerics behind `--precision int4`.

A MatMul weight W [K, N] is cut into blocks of `block` consecutive rows (along K, the reduction
axis) per output column; each block has its own scale (and, asymmetric, its own zero point):

    symmetric (TensorRT's form):  q = clip(round(w / s), -8, 7),          s = clip * max|w| / 7
    asymmetric (ORT CPU only):    q = clip(round(w / s) + z, 0, 15),      s = clip * (max - min) / 15

which is exactly what ONNX DequantizeLinear (opset 21, `axis=0`, `block_size`) computes back:
w' = (q - z) * s, with s of shape [K / block, N]. `clip` (<= 1, per block and column) is AWQ's
clip search; 1 is plain round-to-nearest.
"""

from __future__ import annotations

import numpy as np

BLOCK_SIZES = (128, 64, 32, 16)
INT4_MIN, INT4_MAX, UINT4_MAX = -8, 7, 15


def block_for(k: int, requested: int) -> int | None:
    """`requested` if it divides K, else the largest smaller standard block that does (None: none)."""
    for block in (requested, *[b for b in BLOCK_SIZES if b < requested]):
        if k % block == 0 and k >= block:
            return block
    return None


def quantize_blocks(w: np.ndarray, block: int, symmetric: bool = True,
                    clip: np.ndarray | float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(q [K, N] int8 holding int4/uint4 values, scale [K/block, N] float32, zero [K/block, N] or None)."""
    k, n = w.shape
    wb = np.asarray(w, np.float32).reshape(k // block, block, n)
    ratio = 1.0 if clip is None else np.asarray(clip, np.float32)
    if symmetric:
        amax = np.abs(wb).max(axis=1) * ratio
        scale = np.where(amax > 0, amax / INT4_MAX, 1.0).astype(np.float32)
        q = np.clip(np.rint(wb / scale[:, None, :]), INT4_MIN, INT4_MAX)
        zero = None
    else:
        lo = np.minimum(wb.min(axis=1), 0.0) * ratio  # the range holds 0, so 0 stays exact
        hi = np.maximum(wb.max(axis=1), 0.0) * ratio
        scale = np.where(hi > lo, (hi - lo) / UINT4_MAX, 1.0).astype(np.float32)
        zero = np.clip(np.rint(-lo / scale), 0, UINT4_MAX).astype(np.int8)
        q = np.clip(np.rint(wb / scale[:, None, :]) + zero[:, None, :], 0, UINT4_MAX)
    return q.reshape(k, n).astype(np.int8), scale, zero


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, block: int) -> np.ndarray:
    k, n = q.shape
    qb = q.reshape(k // block, block, n).astype(np.float32)
    if zero is not None:
        qb = qb - zero[:, None, :].astype(np.float32)
    return (qb * scale[:, None, :]).reshape(k, n)


def fake_quantize(w: np.ndarray, block: int, symmetric: bool = True, clip=None) -> np.ndarray:
    """W after an INT4 round trip: what the DQ + MatMul computes with."""
    return dequantize_blocks(*quantize_blocks(w, block, symmetric, clip), block)


def onnx_int4(q: np.ndarray, symmetric: bool) -> np.ndarray:
    """The values as ml_dtypes int4/uint4, which onnx serializes as INT4/UINT4 (packed two a byte)."""
    import ml_dtypes

    return q.astype(ml_dtypes.int4 if symmetric else ml_dtypes.uint4)


def packed_constant(name: str, values: np.ndarray):
    """A graph constant of an ml_dtypes array (int4, uint4, float8): onnx packs and types it
    (onnx-graphsurgeon would write numpy's one byte per value under a 4-bit type)."""
    import onnx_graphsurgeon as gs
    from onnx import numpy_helper

    return gs.Constant(name, gs.ir.tensor.LazyValues(numpy_helper.from_array(values, name)))
