"""Continuous batching over a static KV cache: requests from any thread share one decode loop.

The cache has a fixed number of rows (slots). `submit()` queues a request (one prompt row); the
scheduler thread admits queued requests into free slots in arrival order, writes each prompt into
its row in chunks (chunked prefill: a prompt may be as long as the cache), and runs one decode step
for every decoding row at a time, each row with its own length, positions, stop tokens and
sampling. A finished or cancelled row frees its slot for the next request. Callers read their
tokens from their own queue, so a caller only ever sees its own row's tokens.

Only the scheduler thread touches the cache, slot assignments and row state; callers and the
thread meet in one lock (the queue of waiting requests, cancel flags) and in per-request queues.
So there is no check-then-act on shared state: a request waits for a slot (with an optional
timeout) instead of racing for one.

    loop:  admit waiting requests into free slots (lowest free row first, so decoding rows stay
           packed at the front and a decode step's row range [0, n) holds little else)
           one prefill chunk of the oldest prefilling request
           one decode step over rows [0, last decoding row] (rows in that range that are not
           decoding are fed a dummy token at their own write position: harmless, since a
           prefilling row's next chunk overwrites it and a free row is rewritten on admission)

Imports numpy and the standard library only.
"""

from __future__ import annotations

import collections
import queue
import threading
import time

import numpy as np


_END = object()


class Request:
    """One prompt row: its tokens come out of `tokens` (ints), then `_END` or an exception."""

    def __init__(self, prompt: np.ndarray, max_new_tokens: int, choose, stops: np.ndarray):
        self.prompt = np.ascontiguousarray(prompt, np.int64)
        self.max_new_tokens = int(max_new_tokens)
        self.choose = choose  # logits [1, vocab] -> token, with the request's own sampling state
        self.stops = stops
        self.tokens: queue.SimpleQueue = queue.SimpleQueue()
        self.admitted = threading.Event()
        self.cancelled = False
        self.finished = False
        # Owned by the scheduler thread once admitted:
        self.slot: int | None = None
        self.length = 0  # positions written into the row
        self.generated = 0
        self.next_token = 0

    @property
    def prefilling(self) -> bool:
        return self.length < len(self.prompt)

    def cancel(self) -> None:
        """Stop generating (e.g. the client went away); the slot is freed by the scheduler."""
        self.cancelled = True

    def __iter__(self):
        """The request's tokens as they come (raises what the scheduler hit, if anything)."""
        while True:
            item = self.tokens.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item


class Scheduler:
    def __init__(self, cache, prefill_chunk: int):
        self.cache = cache
        self.prefill_chunk = max(1, int(prefill_chunk))
        self.rows: list[Request | None] = [None] * cache.slots
        self.waiting: collections.deque[Request] = collections.deque()
        self.wakeup = threading.Condition()
        self.closed = False
        # Counters for tests and benchmarks: decode steps, prefill chunks, most rows in one step,
        # calls that read the whole cache in place (static_cache.kv_length).
        self.stats = {"decode_steps": 0, "prefill_chunks": 0, "peak_rows": 0, "whole_cache_reads": 0}
        self.thread = threading.Thread(target=self._loop, name="trtcompile-decode", daemon=True)
        self.thread.start()

    # --- caller side ------------------------------------------------------------------------

    def submit(self, request: Request) -> Request:
        with self.wakeup:
            if self.closed:
                raise RuntimeError("the model was closed")
            self.waiting.append(request)
            self.wakeup.notify_all()
        return request

    def wait_admitted(self, requests: list[Request], timeout: float | None) -> bool:
        """True once every request holds a slot; on timeout, withdraw those still waiting."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for request in requests:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not request.admitted.wait(left):
                with self.wakeup:
                    if not request.admitted.is_set():
                        return False
        return True

    def cancel(self, requests: list[Request]) -> None:
        with self.wakeup:
            for request in requests:
                request.cancel()
                if request in self.waiting:
                    self.waiting.remove(request)
                    request.finished = True
                    request.tokens.put(_END)
            self.wakeup.notify_all()

    def close(self) -> None:
        with self.wakeup:
            self.closed = True
            self.wakeup.notify_all()
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=60)
        self.cache.close()

    # --- scheduler thread -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self.wakeup:
                while not self.closed and not self.waiting and not any(self.rows):
                    self.wakeup.wait()
                if self.closed:
                    self._fail_all(RuntimeError("the model was closed while generating"))
                    return
                self._admit()
            self._drop_cancelled()
            try:
                self._prefill_one_chunk()
                self._decode_step()
            except BaseException as exc:  # a backend error fails the rows in flight, never the loop
                for slot, request in enumerate(self.rows):
                    if request is not None:
                        self._finish(slot, request, exc)

    def _admit(self) -> None:
        while self.waiting and None in self.rows:
            request = self.waiting.popleft()
            slot = self.rows.index(None)
            request.slot, request.length = slot, 0
            self.rows[slot] = request
            request.admitted.set()

    def _drop_cancelled(self) -> None:
        for slot, request in enumerate(self.rows):
            if request is not None and request.cancelled:
                self._finish(slot, request)

    def _finish(self, slot: int, request: Request, error: BaseException | None = None) -> None:
        self.rows[slot] = None
        request.finished = True
        request.tokens.put(error if error is not None else _END)

    def _emit(self, slot: int, request: Request, logits: np.ndarray) -> None:
        token = int(request.choose(logits))
        request.tokens.put(token)
        request.generated += 1
        request.next_token = token
        if request.generated >= request.max_new_tokens or token in request.stops:
            self._finish(slot, request)

    def _prefill_one_chunk(self) -> None:
        prefilling = [(s, r) for s, r in enumerate(self.rows) if r is not None and r.prefilling]
        if not prefilling:
            return
        slot, request = prefilling[0]
        start = request.length
        chunk = request.prompt[start:start + self.prefill_chunk]
        end = start + len(chunk)
        positions = np.arange(start, end, dtype=np.int64)[None, :]
        logits = self._run(slot, chunk[None, :], positions, np.array([start], np.int64), end)
        request.length = end
        self.stats["prefill_chunks"] += 1
        if not request.prefilling:  # the whole prompt is in: its logits give the first token
            self._emit(slot, request, logits)

    def _decode_step(self) -> None:
        decoding = [s for s, r in enumerate(self.rows) if r is not None and not r.prefilling]
        if not decoding:
            return
        n = decoding[-1] + 1
        ids = np.zeros((n, 1), np.int64)
        write = np.zeros(n, np.int64)
        for slot in range(n):
            request = self.rows[slot]
            if request is not None:
                write[slot] = request.length
                if not request.prefilling:
                    ids[slot, 0] = request.next_token
        needed = max(self.rows[s].length for s in decoding) + 1
        logits = self._run(0, ids, write[:, None].copy(), write, needed)
        self.stats["decode_steps"] += 1
        self.stats["peak_rows"] = max(self.stats["peak_rows"], len(decoding))
        for slot in decoding:
            request = self.rows[slot]
            request.length += 1
            self._emit(slot, request, logits[slot:slot + 1])

    def _run(self, first: int, ids: np.ndarray, positions: np.ndarray, write: np.ndarray, needed: int) -> np.ndarray:
        kv_len = self.cache.kv_length(needed)
        self.stats["whole_cache_reads"] += kv_len == self.cache.max_cache
        return self.cache.run(first, ids, positions, write, kv_len)

    def _fail_all(self, error: BaseException) -> None:
        for slot, request in enumerate(self.rows):
            if request is not None:
                self._finish(slot, request, error)
        while self.waiting:
            request = self.waiting.popleft()
            request.finished = True
            request.tokens.put(error)
