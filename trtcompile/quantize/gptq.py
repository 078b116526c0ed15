"""GPTQ (Frantar et al., 2023): round a weight one input row at a time, pushing each row's rounding
error onto the rows not yet rounded, weighted by the inverse Hessian of the layer's output error.

For Y = X W with W [K, N], the output error of a rounded W_q on calibration rows is
tr((W - W_q)^T H (W - W_q)) with H = X^T X. Rounding row k adds the error e_k = w_k - q(w_k); the
update  W[k+1:] -= H^-1[k+1:, k] e_k / H^-1[k, k]  is the least-squares correction of the rows that
follow, so their rounding absorbs it. In the upper Cholesky factor U of H^-1 that is one row of U
per step; blocks of `_BLOCK` rows apply their updates to the rest of W in one matrix product.

The quantizer stays the one TensorRT runs: symmetric, one scale per output column (INT8) or per
block of `group` rows and output column (INT4, its scale taken from the already-updated rows when
the block starts). Only which integer each weight rounds to changes, and the layer's output on the
calibration rows is closer than round-to-nearest's.

Damping: H + damp * mean(diag(H)) * I. Calibration text is small next to K (a few thousand tokens
for K = 1536 on MiniLM), and an undamped H fits it: damp 0.01 (the paper's) lowered the error on
the calibration rows and raised it on unseen sentences; DEFAULT_DAMP was chosen on held-out text.
"""

from __future__ import annotations

import numpy as np

DEFAULT_DAMP = 0.1
_BLOCK = 128


def gptq_round(w: np.ndarray, gram: np.ndarray, qmax: float, group: int | None = None,
               damp: float = DEFAULT_DAMP, grid=None, act_order: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(q, scales): the quantized values q [K, N] (float64, on the grid) and their scales, [N] per
    output column when `group` is None, else [K / group, N] per block of rows; w ~= q * scale.
    `gram` is X^T X [K, K] of the calibration rows; `grid` rounds and saturates values already
    divided by their scale (default: integers in [-qmax, qmax]; FP8 passes its E4M3 cast).
    `act_order` rounds the rows with the largest diag(H) (the busiest input channels) first, so the
    error of the rest is what gets compensated; the scales then come from the unrounded W of each
    block ("static groups"), so blocks stay contiguous rows along K, the layout TensorRT and
    DequantizeLinear take."""
    w = np.array(w, np.float64)
    k, n = w.shape
    grid = grid or (lambda v: np.clip(np.rint(v), -qmax, qmax))
    h = np.array(gram, np.float64)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    w[dead, :] = 0.0  # an input channel that is always 0 contributes nothing
    h[np.diag_indices(k)] += damp * max(float(np.mean(np.diag(h))), 1e-12)
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else None
    static = None
    if perm is not None:
        if group is not None:
            assert k % group == 0, (k, group)
            static = np.stack([_scale(w[g:g + group], qmax) for g in range(0, k, group)])
        w, h = w[perm], h[perm][:, perm]
    u = _inverse_cholesky_upper(h)
    q = np.zeros_like(w)
    if group is None:
        col_scale = _scale(w, qmax)
        scales = col_scale
    elif static is not None:
        scales = static
    else:
        assert k % group == 0 and _BLOCK % group == 0, (k, group)  # a block's scale sees its updated rows
        scales = np.zeros((k // group, n))
        col_scale = None
    for b0 in range(0, k, _BLOCK):
        b1 = min(b0 + _BLOCK, k)
        wb = w[b0:b1].copy()
        errs = np.zeros_like(wb)
        ub = u[b0:b1, b0:b1]
        for i in range(b1 - b0):
            row = b0 + i
            if static is not None:
                col_scale = static[perm[row] // group]
            elif group is not None and row % group == 0:
                col_scale = _scale(wb[i:i + group], qmax)
                scales[row // group] = col_scale
            qi = grid(wb[i] / col_scale)
            q[row] = qi
            err = (wb[i] - qi * col_scale) / ub[i, i]
            wb[i + 1:] -= np.outer(ub[i, i + 1:], err)
            errs[i] = err
        w[b1:] -= u[b0:b1, b1:].T @ errs
    if perm is not None:
        unpermuted = np.empty_like(q)
        unpermuted[perm] = q
        q = unpermuted
    return q, scales.astype(np.float32)


def _scale(rows: np.ndarray, qmax: float) -> np.ndarray:
    amax = np.abs(rows).max(axis=0)
    return np.where(amax > 0, amax / qmax, 1.0)


def _inverse_cholesky_upper(h: np.ndarray) -> np.ndarray:
    """U upper triangular with H^-1 = U^T U (GPTQ's `torch.linalg.cholesky(H^-1, upper=True)`)."""
    lower = np.linalg.cholesky(h)
    inv = np.linalg.inv(lower)  # H^-1 = inv^T inv
    hinv = inv.T @ inv
    return np.linalg.cholesky(hinv).T
