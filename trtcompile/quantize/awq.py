"""AWQ (Lin et al., 2024): activation-aware scale and clip search for INT4 weights.

A few input channels of X carry most of a MatMul's output (salient channels have large mean |X|).
Scaling those rows of W up before rounding, W' = diag(s) W, and X down, X' = X / s, computes the
same product but rounds the salient weights more finely. The scales are s = mean|X|^alpha
(normalised), alpha searched on a grid per group of MatMuls that read the same X (Q/K/V read one
norm output; gate/up read another), by the error of the INT4 product on sample rows of X:

    err(alpha) = || X W - (X / s) Q(diag(s) W) ||^2 / || X W ||^2      (summed over the group)

alpha = 0 is plain round-to-nearest, so AWQ never does worse than RTN on these rows. 1/s is then
folded into the op that produces X (a norm's weight, a constant Mul, or the up projection feeding
SwiGLU's Mul), so the graph gains no op. Then a clip search per block and output column shrinks
each block's range where that lowers the block's own output error (AWQ's auto_clip).

Everything runs on calibration rows in numpy, float32.
"""

from __future__ import annotations

import numpy as np

from trtcompile.quantize.blocks import fake_quantize

# llm-awq's grids (auto_scale n_grid=20; auto_clip n_grid=20, max_shrink=0.5). On SmolLM2-135M
# (INT4 LM head, block 128, 1024 rows) 20 alphas and clip ratios down to 0.5 took perplexity from
# 1.41x to 1.33x FP32's against 10 alphas and ratios down to 0.7: small models' blocks want
# deeper clipping.
ALPHA_GRID = 20  # alphas 0, 0.05, ..., 0.95
CLIP_RATIOS = tuple(1.0 - i / 20 for i in range(10))  # 1.0, 0.95, ..., 0.55
_COLUMNS_PER_CHUNK = 8192  # bounds the clip search's [blocks, rows, columns] temporaries


def normalised_scales(x_mean: np.ndarray, alpha: float) -> np.ndarray:
    s = np.power(np.maximum(np.asarray(x_mean, np.float64), 1e-4), alpha)
    s = s / np.sqrt(s.max() * s.min())
    return s.astype(np.float32)


def relative_error(x: np.ndarray, w: np.ndarray, w_effective: np.ndarray) -> float:
    """|| X W - X W_eff ||^2 / || X W ||^2 on the sample rows X."""
    y = x @ w
    return float(((x @ (w - w_effective)) ** 2).sum() / max(float((y ** 2).sum()), 1e-30))


def search_scale(x: np.ndarray, x_mean: np.ndarray, weights: list[np.ndarray], block: int,
                 symmetric: bool = True) -> tuple[float, np.ndarray, float, float]:
    """(alpha, s, error with s, error of plain RTN) for one group of [K, N] weights reading X."""
    x = np.asarray(x, np.float32)
    ys = [x @ w for w in weights]
    norm = max(sum(float((y ** 2).sum()) for y in ys), 1e-30)
    best = (0.0, np.ones(x.shape[1], np.float32), np.inf)
    rtn = np.inf
    for step in range(ALPHA_GRID):
        alpha = step / ALPHA_GRID
        s = normalised_scales(x_mean, alpha) if alpha else np.ones(x.shape[1], np.float32)
        err = 0.0
        for w, y in zip(weights, ys):
            w_eff = fake_quantize(w * s[:, None], block, symmetric) / s[:, None]
            err += float(((x @ w_eff - y) ** 2).sum())
        err /= norm
        if step == 0:
            rtn = err
        if err < best[2]:
            best = (alpha, s, err)
    return best[0], best[1], best[2], rtn


def search_clip(x: np.ndarray, w: np.ndarray, block: int, symmetric: bool = True) -> np.ndarray:
    """The clip ratio [K/block, N] per block and output column that minimises that block's share
    of the output error, || X_block (W_block - Q(W_block)) ||^2."""
    x = np.asarray(x, np.float32)
    k, n = w.shape
    groups = k // block
    xg = np.ascontiguousarray(x.reshape(x.shape[0], groups, block).transpose(1, 0, 2))  # [G, R, B]
    best_ratio = np.ones((groups, n), np.float32)
    for start in range(0, n, _COLUMNS_PER_CHUNK):
        cols = slice(start, min(n, start + _COLUMNS_PER_CHUNK))
        wc = w[:, cols]
        best_err = np.full((groups, wc.shape[1]), np.inf, np.float32)
        for ratio in CLIP_RATIOS:
            dw = (wc - fake_quantize(wc, block, symmetric, ratio)).reshape(groups, block, -1)
            err = (np.matmul(xg, dw) ** 2).mean(axis=1)  # [G, columns]
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_ratio[:, cols] = np.where(better, ratio, best_ratio[:, cols])
    return best_ratio
