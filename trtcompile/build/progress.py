"""Build progress: TensorRT's IProgressMonitor callbacks, shown as rich progress bars.

TensorRT reports nested phases ("Building engine" > "Tactic selection" > ...) with a step count
each, from its build threads. `PhaseTracker` keeps that bookkeeping (plain Python, tested on
CPU); `make_monitor` wraps it in an `IProgressMonitor` subclass, which can only be defined once
tensorrt is imported. A Ctrl-C inside a callback cannot propagate through TensorRT, so it is
turned into "cancel the build" (step_complete returning False) and re-raised by the caller.
"""

from __future__ import annotations

import sys
from typing import Callable

# What the monitor reports: (bucket, phase, done, total, depth); done = 0 at phase start and
# total at phase end, depth 0 for a top-level phase.
PhaseCallback = Callable[[str, str, int, int, int], None]


def status_line(on_progress: Callable[[str], None]) -> PhaseCallback:
    """Adapt a one-line status callback (e.g. a spinner's text) to the monitor's phase events."""

    def report(bucket: str, phase: str, done: int, total: int, depth: int) -> None:
        on_progress(f"engine {bucket!r}: {phase} {done}/{total}")

    return report


class PhaseTracker:
    """Active phases with their depth, steps done and step count."""

    def __init__(self):
        self.active: dict[str, dict] = {}

    def start(self, phase: str, parent: str | None, total: int) -> int:
        depth = self.active[parent]["depth"] + 1 if parent in self.active else 0
        self.active[phase] = {"depth": depth, "done": 0, "total": max(int(total), 1)}
        return depth

    def step(self, phase: str, step: int) -> tuple[int, int]:
        entry = self.active.setdefault(phase, {"depth": 0, "done": 0, "total": step + 1})
        entry["done"] = min(step + 1, entry["total"])
        return entry["done"], entry["total"]

    def finish(self, phase: str) -> int:
        entry = self.active.pop(phase, None)
        return entry["total"] if entry else 0


class RichDisplay:
    """One rich progress bar per active phase, indented by depth; nothing when stderr is not a terminal."""

    def __init__(self):
        self.progress, self.tasks = None, {}
        try:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        except ImportError:
            return
        if not sys.stderr.isatty():
            return
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(stderr=True), transient=True)

    def __enter__(self):
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, bucket: str, phase: str, done: int, total: int, depth: int = 0) -> None:
        if self.progress is None:
            return
        if phase not in self.tasks:
            label = f"[{bucket}] " if depth == 0 else "  " * depth
            self.tasks[phase] = self.progress.add_task(f"{label}{phase}", total=total)
        self.progress.update(self.tasks[phase], completed=done, total=total)
        if done >= total and total > 0 and depth > 0:
            self.progress.remove_task(self.tasks.pop(phase))


def make_monitor(trt, bucket: str, callback: PhaseCallback):
    """An IProgressMonitor for one bucket's build; callback(bucket, phase, done, total, depth)."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self.tracker = PhaseTracker()
            self.depth: dict[str, int] = {}
            self.cancelled = False

        def _notify(self, phase: str, done: int, total: int) -> None:
            callback(bucket, phase, done, total, self.depth.get(phase, 0))

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                self.depth[phase_name] = self.tracker.start(phase_name, parent_phase, num_steps)
                self._notify(phase_name, 0, max(int(num_steps), 1))
            except KeyboardInterrupt:
                self.cancelled = True  # phase_start cannot cancel; step_complete will

        def step_complete(self, phase_name, step):
            try:
                done, total = self.tracker.step(phase_name, step)
                self._notify(phase_name, done, total)
                return not self.cancelled
            except KeyboardInterrupt:
                self.cancelled = True
                return False

        def phase_finish(self, phase_name):
            try:
                total = self.tracker.finish(phase_name)
                self._notify(phase_name, total, total)
                self.depth.pop(phase_name, None)
            except KeyboardInterrupt:
                self.cancelled = True

    return Monitor()
