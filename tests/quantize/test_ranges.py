"""Range math against numpy on known distributions."""

from __future__ import annotations

import numpy as np
import pytest

from trtcompile.quantize.ranges import AbsHistogram, activation_amax, entropy_amax, percentile_amax


def _hist(*batches) -> AbsHistogram:
    h = AbsHistogram()
    for b in batches:
        h.add(b)
    return h


def test_histogram_growing_range_keeps_every_value():
    rng = np.random.default_rng(0)
    small, large = rng.standard_normal(10_000), rng.standard_normal(10_000) * 50  # range doubles ~6 times
    h = _hist(small, large)
    assert h.counts.sum() == 20_000 and h.amax == pytest.approx(np.abs(np.r_[small, large]).max(), rel=1e-6)
    # Bins are still exact: the count below any edge equals numpy's.
    edge = 64 * h.width
    assert h.counts[:64].sum() == np.count_nonzero(np.abs(np.r_[small, large]).astype(np.float32) < edge)


def test_minmax_and_percentile_match_numpy():
    x = np.random.default_rng(1).standard_normal(200_000).astype(np.float32)
    h = _hist(x[:100_000], x[100_000:])
    assert activation_amax(h, "minmax") == pytest.approx(np.abs(x).max(), rel=1e-6)
    for p in (99.0, 99.9, 99.99):
        assert percentile_amax(h, p) == pytest.approx(np.percentile(np.abs(x), p), rel=0.01)


def test_entropy_clips_rare_outliers_but_not_the_bulk():
    rng = np.random.default_rng(2)
    x = np.r_[rng.standard_normal(100_000), [300.0, -250.0, 280.0]]  # three outliers 100x the bulk
    amax = entropy_amax(_hist(x))
    assert 2.0 < amax < 30.0  # the bulk (|x| < ~4.5) keeps resolution; the outliers are clipped
    uniform = rng.uniform(-1, 1, 100_000)
    assert entropy_amax(_hist(uniform)) == pytest.approx(1.0, rel=0.05)  # nothing worth clipping


def test_unknown_method():
    with pytest.raises(ValueError):
        activation_amax(_hist(np.ones(4)), "kl")
