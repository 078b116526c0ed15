"""The CUDA-graph policy over call sequences: how many captures, replays and plain runs.

GraphCache is what EngineSession.enqueue calls with its real enqueue/capture/launch; here the
callables record what would have happened and a captured graph is a token, so the counts are
those of the session's own decision code. Real captures and replays run in test_cuda_gpu.py.
"""

from __future__ import annotations

import pytest

from trtcompile.runtime.graph_cache import GraphCache, graph_key


class Engine:
    """Records the work a session would put on its stream."""

    def __init__(self, capturable=True):
        self.log: list[tuple] = []
        self.closed: list = []
        self.capturable = capturable

    def call(self, cache: GraphCache, key, enabled=True) -> str:
        return cache.call(key, execute=lambda: self.log.append(("run", key)),
                          capture=lambda: ("graph", key) if self.capturable else None,
                          launch=lambda graph: self.log.append(("launch", graph)),
                          release=self.closed.append, enabled=enabled)


ADDRESSES = (("ids", 0x1000), ("logits", 0x2000))


def key(length, profile=0, addresses=ADDRESSES):
    return graph_key(profile, {"ids": (1, length), "mask": (1, length)}, addresses)


def test_shapes_that_change_every_call_are_never_captured():
    # The decode loop's growing context, until the static cache lands: 20 lengths, 20 plain runs.
    cache, engine = GraphCache(), Engine()
    assert [engine.call(cache, key(n)) for n in range(1, 21)] == ["run"] * 20
    assert cache.stats["captures"] == 0 and cache.stats["replays"] == 0 and not cache.graphs


def test_alternating_shapes_both_replay():
    cache, engine = GraphCache(), Engine()
    results = [engine.call(cache, key(n)) for n in [16, 1] * 10]
    # Seen once: run. Seen twice: run, then captured. From then on: replayed.
    assert results == ["run"] * 4 + ["replay"] * 16
    assert dict(cache.stats) == {"runs": 4, "captures": 2, "replays": 16}
    assert engine.log[-2:] == [("launch", ("graph", key(16))), ("launch", ("graph", key(1)))]


def test_a_repeated_shape_replays_from_its_third_call():
    cache, engine = GraphCache(), Engine()
    assert [engine.call(cache, key(8)) for _ in range(5)] == ["run", "run", "replay", "replay", "replay"]


def test_profile_and_addresses_are_part_of_the_key():
    cache, engine = GraphCache(), Engine()
    other_profile, rebound = key(8, profile=1), key(8, addresses=(("ids", 0x1000), ("logits", 0x3000)))
    assert len({key(8), other_profile, rebound}) == 3
    for _ in range(3):
        engine.call(cache, key(8))
    assert engine.call(cache, rebound) == "run"  # a rebound output is another graph, not a wrong replay
    assert engine.call(cache, key(8)) == "replay"  # and the old binding's graph is still there


def test_least_recently_used_graphs_go_first_and_are_closed():
    cache, engine = GraphCache(capacity=3), Engine()
    for n in (1, 2, 3, 1, 2, 3):
        engine.call(cache, key(n))
    assert cache.stats["captures"] == 3 and not engine.closed
    engine.call(cache, key(1))  # replay: 1 becomes the most recently used
    for _ in range(2):
        engine.call(cache, key(4))  # the 4th graph evicts the least recently used: 2
    assert engine.closed == [("graph", key(2))] and cache.stats["evictions"] == 1
    assert set(cache.graphs) == {key(3), key(1), key(4)}
    assert engine.call(cache, key(1)) == "replay" and engine.call(cache, key(2)) == "run"


def test_uncapturable_keys_are_not_tried_again_and_disabled_means_plain_runs():
    cache, engine = GraphCache(), Engine(capturable=False)
    assert [engine.call(cache, key(8)) for _ in range(4)] == ["run"] * 4
    assert cache.stats["failed_captures"] == 1
    cache, engine = GraphCache(), Engine()
    assert [engine.call(cache, key(8), enabled=False) for _ in range(4)] == ["run"] * 4
    assert cache.stats["captures"] == 0


def test_clear_hands_back_every_graph_and_bad_settings_are_refused():
    cache, engine = GraphCache(), Engine()
    for n in (1, 1, 2, 2):
        engine.call(cache, key(n))
    assert sorted(cache.clear()) == sorted([("graph", key(1)), ("graph", key(2))])
    assert engine.call(cache, key(1)) == "run"  # sightings were forgotten too
    with pytest.raises(ValueError):
        GraphCache(capture_after=0)
