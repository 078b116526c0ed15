"""Progress for long stages: a spinner with the current step, and one line per finished stage."""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager


class Progress:
    """Prints to stderr; quiet=True prints nothing (library use, tests)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.timings: dict[str, float] = {}
        # Peak resident memory (MiB) of this process during each stage, sampled (see RssSampler).
        self.peak_rss_mib: dict[str, int] = {}
        self._status = None
        self._console = None
        if not quiet:
            try:
                from rich.console import Console

                self._console = Console(stderr=True, soft_wrap=True)
            except ImportError:
                pass

    def line(self, text: str) -> None:
        if self.quiet:
            return
        if self._console is not None:
            self._console.print(text, highlight=False)
        else:
            print(text, file=sys.stderr)

    def step(self, text: str) -> None:
        """Update the spinner's text within a stage (e.g. the pass now running)."""
        if self._status is not None:
            self._status.update(text)

    @contextmanager
    def stage(self, name: str, detail: str = ""):
        start = time.perf_counter()
        label = f"{name} {detail}".strip()
        with RssSampler() as rss:
            if self.quiet or self._console is None:
                self.line(f"… {label}")
                yield self
            else:
                with self._console.status(label) as status:
                    self._status = status
                    try:
                        yield self
                    finally:
                        self._status = None
        self.timings[name] = round(time.perf_counter() - start, 3)
        if rss.peak_mib:
            self.peak_rss_mib[name] = rss.peak_mib
        memory = f", peak {rss.peak_mib / 1024:.2f} GiB" if rss.peak_mib else ""
        self.line(f"[green]✓[/green] {label} ({self.timings[name]:.1f} s{memory})" if self._console else
                  f"done {label} ({self.timings[name]:.1f} s{memory})")


class RssSampler:
    """The peak resident set size of this process while the block runs, sampled every 50 ms.

    The kernel's own high-water mark (VmHWM, ru_maxrss) covers the whole process lifetime and
    resetting it (/proc/self/clear_refs) would also falsify what `time -v` or a parent's
    getrusage report, so each stage samples instead. Linux only; elsewhere peak_mib stays 0.
    """

    INTERVAL_S = 0.05

    def __init__(self):
        self.peak_mib = 0
        self._stop = threading.Event()
        self._thread = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _sample(self) -> None:
        try:
            with open("/proc/self/statm") as f:
                pages = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            return
        self.peak_mib = max(self.peak_mib, pages * self._page >> 20)

    def _run(self) -> None:
        while not self._stop.wait(self.INTERVAL_S):
            self._sample()

    def __enter__(self) -> "RssSampler":
        if os.path.exists("/proc/self/statm"):
            self._sample()
            self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()
