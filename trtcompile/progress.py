"""Progress for long stages: a spinner with the current step, and one line per finished stage."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Progress:
    """Prints to stderr; quiet=True prints nothing (library use, tests)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.timings: dict[str, float] = {}
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
        self.line(f"[green]✓[/green] {label} ({self.timings[name]:.1f} s)" if self._console else
                  f"done {label} ({self.timings[name]:.1f} s)")
