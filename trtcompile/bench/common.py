"""Timing and table printing shared by the benchmarks."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable

from trtcompile.timing import Timing, time_fn, timing_of  # noqa: F401 - the benchmarks' timing lives with the runtime's


def time_interleaved(fns: dict[str, Callable[[], object]], *, warmup: int = 5, iters: int = 50, block: int = 10,
                     max_seconds: float = 60.0, on_round=None) -> dict[str, Timing]:
    """Time several candidates in alternating blocks of `block` consecutive calls.

    On a noisy machine load drifts over seconds; alternating blocks spreads it evenly across the
    candidates, so their ratios stay meaningful. Blocks, not single calls: PyTorch's OpenMP and
    ONNX Runtime's thread pools spin for a while after a call, and would slow whichever candidate
    runs next; the first call of every block, the one that pays for that, is dropped.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    rounds = max(1, -(-iters // max(1, block - 1)))
    deadline = time.perf_counter() + max_seconds
    for r in range(rounds):
        for name, fn in fns.items():
            for i in range(block):
                start = time.perf_counter()
                fn()
                if i:
                    samples[name].append((time.perf_counter() - start) * 1e3)
        if on_round is not None:
            on_round(r + 1, rounds)
        if time.perf_counter() > deadline and r >= 2:
            break
    return {name: timing_of(s) for name, s in samples.items()}


# While `trtcompile bench --json` runs, tables are collected here instead of printed.
_collected: list[dict] | None = None


@contextmanager
def collected_tables(enabled: bool = True):
    """Collect every print_table of the block as data ({title, columns, rows, note}) instead of printing."""
    global _collected
    if not enabled:
        yield None
        return
    previous, _collected = _collected, []
    try:
        yield _collected
    finally:
        _collected = previous


def print_table(title: str, columns: list[str], rows: list[list], *, note: str | None = None) -> None:
    """A rich table when rich is installed, plain aligned text otherwise (collected under --json)."""
    if _collected is not None:
        _collected.append({"title": title, "columns": list(columns), "rows": [list(r) for r in rows], "note": note})
        return
    cells = [[_fmt(c) for c in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(str(c)) for c in col) for col in zip(columns, *cells)]
        print(title)
        print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
        for row in cells:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if note:
            print(note)
        return
    table = Table(title=title, caption=note)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in cells:
        table.add_row(*row)
    Console(width=160).print(table)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
