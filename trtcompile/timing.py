"""Wall-time statistics of repeated calls: used by `trtcompile run --iterations` and the benchmarks.

Product code imports this, never `trtcompile.bench` (benchmarks import product code, not the reverse).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p99_ms: float
    mean_ms: float
    iters: int

    def ratio_to(self, base: "Timing") -> float:
        return self.median_ms / base.median_ms


def time_fn(fn: Callable[[], object], *, warmup: int = 5, iters: int = 50, max_seconds: float = 20.0) -> Timing:
    """Median and p99 wall time of fn() in ms, after warmup; stops early after max_seconds."""
    for _ in range(warmup):
        fn()
    samples = []
    deadline = time.perf_counter() + max_seconds
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
        if time.perf_counter() > deadline and len(samples) >= 5:
            break
    return timing_of(samples)


def timing_of(samples: list[float]) -> Timing:
    arr = np.asarray(samples)
    return Timing(float(np.median(arr)), float(np.percentile(arr, 99)), float(arr.mean()), len(samples))
