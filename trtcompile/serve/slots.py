"""Admission: a fixed number of slots, a bounded FIFO queue in front of them, 429 when it is full."""

from __future__ import annotations

import asyncio
import math
from collections import deque


class QueueFull(Exception):
    def __init__(self, retry_after: int, waiting: int):
        super().__init__(f"{waiting} requests are already waiting")
        self.retry_after, self.waiting = retry_after, waiting


class Slots:
    """`acquire()` returns when a slot is the caller's; `release()` hands it to the next in line.

    Runs on the event loop only (no locks). A waiter cancelled (client gone) leaves the queue; one
    cancelled just after being handed a slot passes it on, so no slot is ever lost.
    """

    def __init__(self, size: int, max_queue: int, on_change=None):
        self.size, self.max_queue = size, max_queue
        self.in_use = 0
        self.waiting: deque[asyncio.Future] = deque()
        self.on_change = on_change or (lambda slots: None)
        self.mean_seconds = 1.0  # running mean of how long a slot is held, for Retry-After

    async def acquire(self) -> None:
        if self.in_use < self.size and not self.waiting:
            self.in_use += 1
            self.on_change(self)
            return
        if len(self.waiting) >= self.max_queue:
            raise QueueFull(self.retry_after(), len(self.waiting))
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.on_change(self)
        try:
            await future
        except asyncio.CancelledError:
            if future in self.waiting:
                self.waiting.remove(future)
                self.on_change(self)
            elif future.done() and not future.cancelled():
                self.release()
            raise

    def release(self, held_seconds: float | None = None) -> None:
        if held_seconds is not None:
            self.mean_seconds = 0.9 * self.mean_seconds + 0.1 * held_seconds
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_result(None)  # the slot moves to it: in_use stays the same
                self.on_change(self)
                return
        self.in_use -= 1
        self.on_change(self)

    def retry_after(self) -> int:
        """Seconds until the queue has likely moved by its own length (at least 1)."""
        return max(1, math.ceil(self.mean_seconds * (len(self.waiting) + 1) / self.size))
