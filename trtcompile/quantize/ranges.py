"""Activation ranges from calibration statistics: min-max, percentile, entropy (KL) and mse.

All three are symmetric (TensorRT's INT8 activations are per-tensor with zero point 0), so each
works on |x|: a streaming histogram of |x| over [0, R] whose range doubles (merging bin pairs) when
a batch exceeds it, so one calibration pass suffices and memory stays 2048 bins per tensor.
"""

from __future__ import annotations

import numpy as np

NUM_BINS = 2048
INT8_LEVELS = 128  # quantized magnitudes 0..127


class AbsHistogram:
    """Histogram of |x| with a growable range, plus the exact max."""

    def __init__(self, bins: int = NUM_BINS):
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.range = 0.0
        self.amax = 0.0

    def add(self, values: np.ndarray) -> None:
        a = np.abs(np.asarray(values, dtype=np.float32)).ravel()
        a = a[np.isfinite(a)]
        if not a.size:
            return
        peak = float(a.max())
        self.amax = max(self.amax, peak)
        if self.range == 0.0:
            self.range = peak if peak > 0 else 1e-8
        while peak > self.range:  # double the range: bin pairs merge, edges stay aligned
            self.counts = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.concatenate([self.counts, np.zeros(self.bins // 2, np.int64)])
            self.range *= 2.0
        idx = np.minimum((a * (self.bins / self.range)).astype(np.int64), self.bins - 1)
        self.counts += np.bincount(idx, minlength=self.bins)

    @property
    def width(self) -> float:
        return self.range / self.bins


def minmax_amax(hist: AbsHistogram) -> float:
    return hist.amax


def percentile_amax(hist: AbsHistogram, percentile: float) -> float:
    """The |x| below which `percentile` % of the values lie (upper edge of that bin)."""
    total = hist.counts.sum()
    if total == 0:
        return hist.amax
    cdf = np.cumsum(hist.counts) / total
    i = int(np.searchsorted(cdf, percentile / 100.0))
    return float(min(hist.amax, (i + 1) * hist.width))


def entropy_amax(hist: AbsHistogram, levels: int = INT8_LEVELS) -> float:
    """TensorRT's entropy calibration: the clip threshold whose 128-level quantization of the
    histogram loses the least information (KL divergence), outliers folded into the last bin."""
    counts = hist.counts.astype(np.float64)
    last = int(np.nonzero(counts)[0].max()) + 1 if counts.any() else 0
    if last <= levels:
        return hist.amax
    best_kl, best_i = np.inf, last
    for i in range(levels, last + 1):
        p = counts[:i].copy()
        p[i - 1] += counts[i:].sum()
        # Quantize counts[:i] into `levels` chunks, spread each chunk's mass over its nonzero bins.
        edges = (np.arange(levels + 1) * i) // levels
        starts = edges[:-1]
        chunk_sum = np.add.reduceat(counts[:i], starts)
        nonzero = counts[:i] > 0
        chunk_nz = np.add.reduceat(nonzero.astype(np.float64), starts)
        per_bin = np.divide(chunk_sum, chunk_nz, out=np.zeros_like(chunk_sum), where=chunk_nz > 0)
        q = np.repeat(per_bin, np.diff(edges)) * nonzero
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            continue
        pn, qn = p / p_sum, q / q_sum
        mask = pn > 0
        # Bins where P has mass but Q has none get a tiny floor (as TensorRT/ORT smooth).
        qn = np.where(mask & (qn == 0), 1e-12, qn)
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / qn[mask])))
        if kl < best_kl:
            best_kl, best_i = kl, i
    return float(min(hist.amax, (best_i + 0.5) * hist.width))


MSE_PERCENTILES = (99.0, 99.9, 99.99, 99.999)


def search_amax(hist: AbsHistogram, rows, weights: list[np.ndarray], fmt=None) -> float:
    """mse: the clip (max, entropy's, or a percentile) whose quantized activation gives the smallest
    error of the products X_q @ W_q against X @ W on the sample rows, over the MatMuls reading X.
    An outlier-heavy FFN input gets a tighter range than min-max; a flat one keeps its max.
    Without rows or weights (activation x activation MatMuls): min-max."""
    from trtcompile.quantize.qdq import INT8, quantize_weight

    fmt = fmt or INT8
    if rows is None or not weights:
        return minmax_amax(hist)
    x = np.asarray(rows, np.float64)
    wq = []
    for w in weights:
        q, scale = quantize_weight(w, 1, fmt)
        wq.append(q.astype(np.float64) * scale[None, :])
    exact = [x @ w for w in weights]
    candidates = {minmax_amax(hist), entropy_amax(hist) if fmt.name == "int8" else minmax_amax(hist)}
    candidates |= {percentile_amax(hist, p) for p in MSE_PERCENTILES}
    best, best_err = minmax_amax(hist), np.inf
    for amax in sorted(c for c in candidates if c > 0):
        step = amax / fmt.qmax
        xq = fmt.cast(x / step).astype(np.float64) * step
        err = sum(float(((xq @ w - y) ** 2).mean()) for w, y in zip(wq, exact))
        if err < best_err:
            best, best_err = amax, err
    return float(best)


def activation_amax(hist: AbsHistogram, method: str, percentile: float = 99.99) -> float:
    if method == "minmax":
        return minmax_amax(hist)
    if method == "percentile":
        return percentile_amax(hist, percentile)
    if method == "entropy":
        return entropy_amax(hist)
    raise ValueError(f"unknown calibration method {method!r}")
