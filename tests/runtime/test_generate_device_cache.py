"""DeviceKVCache's binding logic, run against a stand-in for the TensorRT backend.

No TensorRT builder or GPU here, so the engine is the package's model.onnx in ONNX Runtime and
"device memory" is host memory behind the same pointer arithmetic: what is checked is which
address each past/present tensor is bound to at each step, the shapes, the bucket switch from
prefill to decode, that only ids/mask/positions go up and only logits come down, and that the
sessions get their own buffers back afterwards.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from decoder_packages import compiled_decoder
from trtcompile import runtime
from trtcompile.runtime import cuda
from trtcompile.runtime.generate import DeviceKVCache
from trtcompile.runtime.manifest import read_manifest


class HostArena:
    """cuda.DeviceArena's interface over numpy memory."""

    live: list = []

    def __init__(self, nbytes: int):
        self.memory = np.zeros(nbytes + 256, np.uint8)
        self.ptr = (self.memory.ctypes.data + 255) // 256 * 256
        HostArena.live.append(self)

    def close(self):
        self.ptr = 0


def read(ptr: int, dtype, shape) -> np.ndarray:
    n = int(np.prod(shape))
    raw = (ctypes.c_char * (n * np.dtype(dtype).itemsize)).from_address(ptr)
    return np.frombuffer(raw, dtype=dtype, count=n).reshape(shape)


class FakeSession:
    """EngineSession's generate-facing surface; 'runs the engine' with ONNX Runtime."""

    class Tensor:
        def __init__(self, ptr):
            self.device_ptr = ptr

    def __init__(self, ort_session, bucket, log):
        self.ort, self.bucket, self.log = ort_session, bucket, log
        self.cuda_graphs, self.context = True, object()
        self.own = HostArena(1 << 16)
        self.tensors = {o.name: self.Tensor(self.own.ptr) for o in [*ort_session.get_inputs(), *ort_session.get_outputs()]}
        self.addresses = {n: t.device_ptr for n, t in self.tensors.items()}
        self.shapes, self.staged, self.results = {}, {}, {}

    def bind(self, name, ptr):
        assert ptr % 256 == 0
        self.addresses[name] = ptr

    def set_input_shapes(self, shapes):
        self.shapes.update(shapes)

    def upload(self, feeds):
        self.log.append(("upload", self.bucket.name, sorted(feeds)))
        self.staged.update(feeds)
        self.shapes.update({k: v.shape for k, v in feeds.items()})

    def enqueue(self):
        assert not self.cuda_graphs, "shapes change every step: graphs must be off while generating"
        feeds = dict(self.staged)
        for inp in self.ort.get_inputs():
            if inp.name.startswith("past_key_values."):
                feeds[inp.name] = read(self.addresses[inp.name], np.float32, self.shapes[inp.name]).copy()
        out = dict(zip([o.name for o in self.ort.get_outputs()], self.ort.run(None, feeds)))
        for name, value in out.items():
            if name.startswith("present."):
                read(self.addresses[name], np.float32, value.shape)[...] = value  # the engine writes in place
        self.results = out
        self.log.append(("enqueue", self.bucket.name, feeds["past_key_values.0.key"].shape[2]))

    def download(self, names, copy=True):
        self.log.append(("download", self.bucket.name, list(names)))
        return {n: self.results[n] for n in names}


class FakeTensorRT:
    name = "tensorrt"

    def __init__(self, manifest):
        import onnxruntime as ort

        sess = ort.InferenceSession(str(manifest.path("model.onnx")), providers=["CPUExecutionProvider"])
        self.log = []
        self.sessions = {b.name: FakeSession(sess, b, self.log) for b in manifest.buckets}

    def session(self, bucket):
        return self.sessions[bucket if isinstance(bucket, str) else bucket.name]

    def close(self):
        pass


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compiled_decoder("llama", tmp_path_factory.mktemp("decoders"), kv_cache="concat")


def test_device_cache_stays_on_device_and_matches_the_ort_path(package, monkeypatch):
    monkeypatch.setattr(cuda, "DeviceArena", HostArena)
    manifest = read_manifest(package)
    backend = FakeTensorRT(manifest)
    model = runtime.Model(manifest, backend)
    ids = np.array([[0, 0, 0, 7, 8, 9], [11, 12, 13, 14, 15, 16]], np.int64)
    mask = (ids != 0).astype(np.int64)

    got = model.generate(ids, mask, max_new_tokens=12, stop_tokens=[])
    with runtime.load(package, backend="onnxruntime") as reference:  # itself checked against HF generate
        np.testing.assert_array_equal(got, reference.generate(ids, mask, max_new_tokens=12, stop_tokens=[]))

    assert isinstance(model._kv_cache, DeviceKVCache)
    uploads = {tuple(e[2]) for e in backend.log if e[0] == "upload"}
    assert uploads == {("attention_mask", "input_ids", "position_ids")}  # no KV cache goes up
    assert {tuple(e[2]) for e in backend.log if e[0] == "download"} == {("logits",)}  # none comes down
    runs = [(e[1], e[2]) for e in backend.log if e[0] == "enqueue"]
    assert runs == [("prefill", 0)] + [("decode", 6 + i) for i in range(11)]

    arenas = [a.ptr for a in model._kv_cache.arenas]
    for session in backend.sessions.values():  # own buffers and graph setting back after generate
        assert session.cuda_graphs
        assert all(session.addresses[n] == t.device_ptr for n, t in session.tensors.items())
    # A second, shorter request reuses the same device arenas.
    model.generate(ids[:, 2:], mask[:, 2:], max_new_tokens=4, stop_tokens=[])
    assert [a.ptr for a in model._kv_cache.arenas] == arenas
    model.close()


def test_static_device_cache_binds_past_and_present_to_one_address(tmp_path_factory, monkeypatch):
    """The static cache on "device" buffers: each layer's past input and present output share one
    address (TensorRT's KV-cache layer writes in place), at the row range's offset; only ids,
    positions, write positions and the mask go up, only logits come down; tokens match ONNX Runtime."""
    from trtcompile.runtime.static_cache import DeviceStaticCache

    package = compiled_decoder("llama", tmp_path_factory.mktemp("decoders"))  # static (the default)
    monkeypatch.setattr(cuda, "DeviceArena", HostArena)
    monkeypatch.setattr(DeviceStaticCache, "_zero", lambda self, n: ctypes.memset(self.arena.ptr, 0, n))
    manifest = read_manifest(package)
    backend = FakeTensorRT(manifest)
    for session in backend.sessions.values():
        session.cuda_graphs = False  # the stand-in's check is for the concat path's changing shapes
    bound = []
    for session in backend.sessions.values():
        original = session.bind
        session.bind = lambda name, ptr, _orig=original: (bound.append((name, ptr)), _orig(name, ptr))[1]
    model = runtime.Model(manifest, backend)
    ids = np.array([[0, 0, 0, 7, 8, 9], [11, 12, 13, 14, 15, 16]], np.int64)
    mask = (ids != 0).astype(np.int64)

    got = model.generate(ids, mask, max_new_tokens=12, stop_tokens=[])
    with runtime.load(package, backend="onnxruntime") as reference:
        np.testing.assert_array_equal(got, reference.generate(ids, mask, max_new_tokens=12, stop_tokens=[]))

    cache = model._scheduler.cache
    assert isinstance(cache, DeviceStaticCache)
    uploads = {tuple(e[2]) for e in backend.log if e[0] == "upload"}
    assert uploads == {("attention_mask", "cache_position", "input_ids", "position_ids")}  # no KV cache goes up
    assert {tuple(e[2]) for e in backend.log if e[0] == "download"} == {("logits",)}  # none comes down
    addresses = dict(bound)
    for layer in range(2):
        for kv in ("key", "value"):
            past, present = f"past_key_values.{layer}.{kv}", f"present.{layer}.{kv}"
            rows = {ptr for name, ptr in bound if name == past}
            assert rows == {ptr for name, ptr in bound if name == present}  # in place, every step
            base = cache.arena.ptr + cache.offsets[past]
            assert rows <= {base, base + cache.row_bytes}  # row 0 (decode, prefill) or row 1 (prefill)
            assert addresses[past] == addresses[present]
    model.close()
