"""The CUDA half of the TensorRT backend on a real GPU, without TensorRT (run by .ci/gpu-check).

A CUDA machine without TensorRT can still check what the backend does around the engine: pinned
and device arenas, non-blocking streams, CUDA-graph capture and replay driven by the session's
GraphCache, and the ownership rule of Bindings with real device memory. The "engine call" here is
a device-to-device copy from the input's bound address to the output's, which is what a graph of
an engine call bakes in too: its addresses and sizes. Everything skips without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from trtcompile.runtime import cuda
from trtcompile.runtime.buffers import Bindings, layout
from trtcompile.runtime.graph_cache import GraphCache, graph_key

CUDA_PROBLEM = cuda.cuda_problem()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(CUDA_PROBLEM is not None, reason=f"needs a CUDA GPU: {CUDA_PROBLEM}")]


@pytest.fixture
def stream():
    s = cuda.Stream()
    yield s
    s.close()


def read_device(ptr: int, count: int, dtype, stream) -> np.ndarray:
    out = np.empty(count, dtype)
    cuda.copy_dtoh_async(out.ctypes.data, ptr, out.nbytes, stream)
    stream.synchronize()
    return out


def write_device(ptr: int, array: np.ndarray, stream) -> None:
    array = np.ascontiguousarray(array)
    cuda.copy_htod_async(ptr, array.ctypes.data, array.nbytes, stream)
    stream.synchronize()


def test_graph_cache_replays_real_graphs_for_alternating_shapes(stream):
    offsets, total = layout({"x": 4096, "y": 4096})
    device, host = cuda.DeviceArena(total), cuda.PinnedArena(total)
    cache, graphs = GraphCache(), []
    x, y = host.view(offsets["x"], 4096, np.float32), host.view(offsets["y"], 4096, np.float32)
    try:
        def call(count: int) -> str:
            nbytes = count * 4

            def enqueue():  # host -> x, x -> y, y -> host: an engine call with its staging copies
                cuda.copy_htod_async(device.ptr + offsets["x"], host.ptr + offsets["x"], nbytes, stream)
                cuda.copy_dtod_async(device.ptr + offsets["y"], device.ptr + offsets["x"], nbytes, stream)
                cuda.copy_dtoh_async(host.ptr + offsets["y"], device.ptr + offsets["y"], nbytes, stream)
                return True

            def capture():
                stream.synchronize()
                graph = cuda.Graph.capture(stream, enqueue)
                graphs.append(graph)
                return graph

            key = graph_key(0, {"x": (count,)}, (("x", device.ptr), ("y", device.ptr + offsets["y"])))
            kind = cache.call(key, execute=enqueue, capture=capture, launch=lambda g: g.launch(stream),
                              release=lambda g: g.close())
            stream.synchronize()
            return kind

        kinds = []
        for i, count in enumerate([256, 1024] * 5):
            x[:count] = np.arange(count, dtype=np.float32) + i  # new data every call
            y[:] = -1
            kinds.append(call(count))
            np.testing.assert_array_equal(y[:count], x[:count])  # a replay moved this call's data
            assert (y[count:] == -1).all()  # and only as much as its shape says
        assert kinds == ["run"] * 4 + ["replay"] * 6
        assert cache.stats["captures"] == 2 and all(g is not None for g in graphs)
    finally:
        for g in cache.clear():
            g.close()
        device.close(), host.close()


def test_run_between_generation_steps_leaves_the_device_cache_alone(stream):
    # A session's own arena and a generation's cache arena, both real device memory.
    names = ["ids", "past", "present", "logits"]
    offsets, total = layout({n: 1024 for n in ("ids", "logits")})
    own_arena = cuda.DeviceArena(total)
    cache = cuda.DeviceArena(2 * 1024)
    resident_arenas = []

    def allocate():
        arena = cuda.DeviceArena(2 * 1024)
        resident_arenas.append(arena)
        return {"past": arena.ptr, "present": arena.ptr + 1024}

    addresses: dict[str, int] = {}
    own = {"ids": own_arena.ptr + offsets["ids"], "logits": own_arena.ptr + offsets["logits"], "past": 0, "present": 0}
    bindings = Bindings(own, addresses.__setitem__, allocate)

    def engine():  # present = past, logits = ids, at whatever addresses TensorRT was given
        cuda.copy_dtod_async(addresses["present"], addresses["past"], 1024, stream)
        cuda.copy_dtod_async(addresses["logits"], addresses["ids"], 1024, stream)

    try:
        live = np.arange(256, dtype=np.float32)
        write_device(cache.ptr, live, stream)
        # A generation step: past from the cache's first half, present into its second.
        bindings.bind("past", cache.ptr)
        bindings.bind("present", cache.ptr + 1024)
        write_device(bindings.upload_target("ids"), np.full(256, 7, np.float32), stream)
        bindings.ensure_addresses()
        engine()
        np.testing.assert_array_equal(read_device(bindings.download_source("present"), 256, np.float32, stream), live)

        # Paused; Model.run with its own host K/V on the same session:
        bindings.own_everything(names)
        write_device(bindings.upload_target("ids"), np.full(256, 3, np.float32), stream)
        write_device(bindings.upload_target("past"), np.full(256, -5, np.float32), stream)
        engine()
        np.testing.assert_array_equal(read_device(bindings.download_source("logits"), 256, np.float32, stream), 3)
        np.testing.assert_array_equal(read_device(bindings.download_source("present"), 256, np.float32, stream), -5)
        # The generation's cache is exactly as the step left it.
        cache_now = read_device(cache.ptr, 512, np.float32, stream)
        np.testing.assert_array_equal(cache_now[:256], live)
        np.testing.assert_array_equal(cache_now[256:], live)
        assert len(resident_arenas) == 1
    finally:
        for arena in [own_arena, cache, *resident_arenas]:
            arena.close()


def test_streams_are_independent_and_non_blocking():
    a, b = cuda.Stream(), cuda.Stream()
    device, host = cuda.DeviceArena(1 << 20), cuda.PinnedArena(1 << 20)
    try:
        assert a.handle != b.handle and a.handle != 0
        data = host.view(0, 1 << 20, np.uint8)
        data[:] = 9
        cuda.copy_htod_async(device.ptr, host.ptr, 1 << 20, a)
        a.synchronize()
        data[:] = 0
        cuda.copy_dtoh_async(host.ptr, device.ptr, 1 << 20, b)
        b.synchronize()
        assert (data == 9).all()
    finally:
        device.close(), host.close(), a.close(), b.close()
