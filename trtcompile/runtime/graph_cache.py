"""When to capture a CUDA graph of an engine call, when to replay one, and how many to keep.

A captured graph bakes in the optimization profile, every input shape and every tensor address,
so the key is (profile, shapes, addresses), as in NVIDIA's TensorRT Edge-LLM runtime
(cpp/runtime/exec/engineExecutor.cpp keys its graphs by engine, profile and a snapshot of
binding addresses and shapes). Graphs are kept per key, least recently used first out, so two
alternating shapes both replay.

Capturing costs time and memory, and a key that never comes back gains nothing (the decode loop's
growing context until the static cache lands: every step has a new shape). So a key is captured
only on its `capture_after`-th sighting, after an ordinary run with those shapes (TensorRT does
per-shape setup on the first enqueue after a change, which must not end up in a graph; trtexec
runs once before capturing too). Sightings are remembered for a bounded number of keys.

The policy is plain Python over opaque graph objects, so its capture/replay counts are tested on
CPU; the session hands it real callables (enqueue, capture, launch, close).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from typing import Callable, Hashable

MAX_GRAPHS = 8  # per execution context
CAPTURE_AFTER = 2  # sightings of a key before it is captured
MAX_SIGHTINGS = 256  # keys remembered while waiting to be captured


def graph_key(profile: int, shapes: dict[str, tuple[int, ...]], addresses) -> tuple:
    """What a captured graph depends on: profile, every input shape, every tensor address."""
    return (profile, tuple(sorted((n, tuple(s)) for n, s in shapes.items())), tuple(sorted(addresses)))


class GraphCache:
    def __init__(self, capacity: int = MAX_GRAPHS, capture_after: int = CAPTURE_AFTER,
                 remember: int = MAX_SIGHTINGS):
        if capacity < 0 or capture_after < 1:
            raise ValueError(f"capacity {capacity} must be >= 0 and capture_after {capture_after} >= 1")
        self.capacity, self.capture_after, self.remember = capacity, capture_after, remember
        self.graphs: OrderedDict[Hashable, object] = OrderedDict()
        self.sightings: OrderedDict[Hashable, int] = OrderedDict()
        self.uncapturable: OrderedDict[Hashable, None] = OrderedDict()
        self.stats: Counter = Counter()  # replays, runs, captures, failed_captures, evictions

    def call(self, key, *, execute: Callable[[], None], capture: Callable[[], object | None],
             launch: Callable[[object], None], release: Callable[[object], None], enabled: bool = True) -> str:
        """Run one engine call for `key`: "replay" a graph, or "run" uncaptured (then maybe capture)."""
        graph = self.graphs.get(key) if enabled else None
        if graph is not None:
            self.graphs.move_to_end(key)
            launch(graph)
            self.stats["replays"] += 1
            return "replay"
        execute()
        self.stats["runs"] += 1
        if enabled and self._due(key):
            graph = capture()
            if graph is None:
                self._remember(self.uncapturable, key, None)
                self.stats["failed_captures"] += 1
            else:
                self.stats["captures"] += 1
                for old in self._store(key, graph):
                    release(old)
        return "run"

    def _due(self, key) -> bool:
        if key in self.uncapturable or self.capacity == 0:
            return False
        seen = self.sightings.pop(key, 0) + 1
        if seen >= self.capture_after:
            return True
        self._remember(self.sightings, key, seen)
        return False

    def _remember(self, table: OrderedDict, key, value) -> None:
        table[key] = value
        table.move_to_end(key)
        while len(table) > self.remember:
            table.popitem(last=False)

    def _store(self, key, graph) -> list:
        self.graphs[key] = graph
        self.graphs.move_to_end(key)
        evicted = []
        while len(self.graphs) > self.capacity:
            evicted.append(self.graphs.popitem(last=False)[1])
            self.stats["evictions"] += 1
        return evicted

    def clear(self) -> list:
        """Forget everything; returns the graphs for the caller to close."""
        graphs = list(self.graphs.values())
        self.graphs.clear()
        self.sightings.clear()
        self.uncapturable.clear()
        return graphs
