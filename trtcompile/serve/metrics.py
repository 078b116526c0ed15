"""Prometheus metrics of one server (its own registry, so several apps can live in one process)."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

TOKENS_PER_S_WINDOW = 10.0  # seconds the tokens/s gauge averages over

# Edge services care about the few-millisecond range: buckets from 1 ms up.
TTFT_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)
TPOT_BUCKETS = (.0005, .001, .002, .004, .008, .016, .032, .064, .128, .256, .512, 1)


class ServerMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("trtcompile_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.ttft = Histogram("trtcompile_time_to_first_token_seconds",
                              "From a generation request's arrival to its first token", ["model"],
                              buckets=TTFT_BUCKETS, registry=r)
        self.tpot = Histogram("trtcompile_time_per_output_token_seconds",
                              "Time between consecutive tokens of one request", ["model"],
                              buckets=TPOT_BUCKETS, registry=r)
        self.queue_depth = Gauge("trtcompile_queue_depth", "Requests waiting for a slot", ["model"], registry=r)
        self.slots_in_use = Gauge("trtcompile_slots_in_use", "Requests being generated (or embedded) now",
                                  ["model"], registry=r)
        self.slots_total = Gauge("trtcompile_slots", "How many requests the model serves at once", ["model"],
                                 registry=r)
        self.generated = Counter("trtcompile_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.prompt_tokens = Counter("trtcompile_prompt_tokens", "Prompt tokens processed", ["model"], registry=r)
        self.embedding_batch = Histogram("trtcompile_embedding_batch_size", "Inputs per embedding run", ["model"],
                                         buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.tokens_per_s = Gauge("trtcompile_tokens_per_second",
                                  f"Generated tokens per second over the last {TOKENS_PER_S_WINDOW:g} s", registry=r)
        self._recent: deque[tuple[float, int]] = deque()
        self.tokens_per_s.set_function(self._rate)

    def tokens(self, counter, count: int) -> None:
        """count tokens generated; `counter` is the model's labelled child of `generated`."""
        counter.inc(count)
        self._recent.append((time.monotonic(), count))

    def _rate(self) -> float:
        cutoff = time.monotonic() - TOKENS_PER_S_WINDOW
        while self._recent and self._recent[0][0] < cutoff:
            self._recent.popleft()
        return sum(c for _, c in self._recent) / TOKENS_PER_S_WINDOW

    def render(self) -> bytes:
        return generate_latest(self.registry)
