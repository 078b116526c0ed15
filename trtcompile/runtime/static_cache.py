"""The static KV cache behind one small protocol, one implementation per backend.

A static-cache package (export/kv_cache.py) takes every layer's cache as an input
[batch, kv_heads, max_cache, head_dim] and returns it, updated by TensorScatter, as the matching
output. The runtime allocates the cache once, `slots` rows deep, and binds the same memory as
input and output, so the update happens in place (ONNX Runtime's TensorScatter checks that past
and present share a buffer; TensorRT's KV-cache layer requires it). A call works on a contiguous
range of rows: a prefill chunk on one row (batch 1 at that row's offset), a decode step on rows
[0, n). Rows are contiguous in memory, so a range is one pointer and a batch size, no copy.

The protocol (what runtime/scheduler.py uses, nothing else):

    cache.slots, cache.max_cache, cache.vocab, cache.dtype (numpy: the cache values' type)
    cache.kv_length(needed) -> kv_len (how many slots a call that needs `needed` reads)
    cache.run(first_row, ids [n, S], positions [n, S], write [n], kv_len) -> logits [n, vocab]
    cache.close()

`write[i]` is where row first_row+i's S new tokens go (its current length); attention reads the
first kv_len slots of each row (>= every row's write + S, a multiple of KV_STEP so shapes repeat;
on ONNX Runtime, past WHOLE_CACHE_FROM of the cache, all max_cache slots, which the graph reads in
place instead of copying a prefix: kv_length below), and the graph's own causal rule (slot j
visible to new token i iff j <= write + i) hides whatever a row holds beyond its length, so the
mask input is all ones and costs nothing per step.

Imports numpy only (+ the backend's own libraries, lazily).
"""

from __future__ import annotations

import numpy as np

# kv_len grows in steps of this many slots: attention work follows the context in use, while
# shapes (ORT's per-shape state, TensorRT's CUDA graphs) repeat for KV_STEP tokens.
KV_STEP = 32
# Past this share of the cache, attention reads the whole cache in place rather than a prefix:
# reading a prefix copies it first (ONNX Runtime's Slice always copies), which costs about what
# attention's own read does. A package's graph takes kv_len == max_cache as "read the cache in place"
# (passes/read_cache_in_place.py); for one compiled before that, the whole read is merely a longer
# prefix. Where the two cost the same depends on the cache's precision: an FP32 prefix's copy is as
# dear as reading the rest, so half; an FP16 one is cast to FP32 either way (whole: every slot), so
# the prefix stays cheaper longer (`trtcompile bench decode` on SmolLM2, 2112 slots, contexts
# 1100:1120 vs 1100:2112: 30 vs 41 ms in the cache-read If per step, 1500: equal). By item size.
WHOLE_CACHE_FROM = {2: 0.7, 4: 0.5}


def prefix_length(needed: int, max_cache: int) -> int:
    """The context rounded up to KV_STEP, at most the whole cache."""
    return min(max_cache, -(-needed // KV_STEP) * KV_STEP)


def kv_length(needed: int, max_cache: int, itemsize: int = 4) -> int:
    """How many cache slots a call reads on ONNX Runtime: the prefix, or all of them (past
    WHOLE_CACHE_FROM of a cache of `itemsize`-byte values)."""
    if needed > max_cache * WHOLE_CACHE_FROM.get(itemsize, 0.5):
        return max_cache
    return prefix_length(needed, max_cache)


class OrtStaticCache:
    """ONNX Runtime on CPU: one numpy buffer per cache tensor, bound through IOBinding as both the
    past input and the present output (the same address, so TensorScatter writes in place)."""

    def __init__(self, session, layout, slots: int, dtype: np.dtype, vocab: int, logits_dtype: np.dtype):
        self.session, self.layout = session, layout
        self.slots, self.max_cache, self.vocab = slots, layout.max_cache, vocab
        self.dtype = np.dtype(dtype)
        row = (layout.num_kv_heads, layout.max_cache, layout.head_dim)
        self.buffers = [np.zeros((slots, *row), self.dtype) for _ in layout.past_inputs]
        self.row_bytes = int(np.prod(row)) * self.dtype.itemsize
        self.ones = np.ones(slots * layout.max_cache, np.int64)
        self.logits = np.empty(slots * vocab, logits_dtype)
        self.logits_dtype = np.dtype(logits_dtype)
        # One binding per call shape family, so a decode step after a prefill chunk rebinds nothing
        # but the small inputs: key -> (binding, (first, n) the caches are bound for).
        self.bindings: dict[str, list] = {}

    def kv_length(self, needed: int) -> int:
        """Slots a call reads: a prefix, or the whole cache in place once that is cheaper (kv_length)."""
        return kv_length(needed, self.max_cache, self.dtype.itemsize)

    def _binding(self, kind: str, first: int, n: int):
        entry = self.bindings.get(kind)
        if entry is None:
            entry = self.bindings[kind] = [self.session.io_binding(), None]
        binding, bound = entry
        if bound != (first, n):
            lay, shape = self.layout, [n, self.layout.num_kv_heads, self.max_cache, self.layout.head_dim]
            for past, present, buf in zip(lay.past_inputs, lay.present_outputs, self.buffers):
                ptr = buf.ctypes.data + first * self.row_bytes
                binding.bind_input(past, "cpu", 0, self.dtype, shape, ptr)
                binding.bind_output(present, "cpu", 0, self.dtype, shape, ptr)
            binding.bind_output(lay.logits, "cpu", 0, self.logits_dtype, [n, 1, self.vocab], self.logits.ctypes.data)
            entry[1] = (first, n)
        return binding

    def run(self, first: int, ids: np.ndarray, positions: np.ndarray, write: np.ndarray, kv_len: int) -> np.ndarray:
        n, new = ids.shape
        if first < 0 or first + n > self.slots:
            raise ValueError(f"rows {first}..{first + n - 1} outside the cache's {self.slots} slots")
        if int(write.max()) + new > self.max_cache or kv_len > self.max_cache:
            # TensorRT drops out-of-bounds writes silently: never let one reach a backend.
            raise ValueError(f"a write of {new} tokens at {int(write.max())} overflows the cache of {self.max_cache}")
        lay = self.layout
        binding = self._binding("prefill" if new > 1 else "decode", first, n)
        binding.bind_cpu_input(lay.input_ids, ids)
        binding.bind_cpu_input(lay.position_ids, positions)
        binding.bind_cpu_input(lay.cache_position, write)
        binding.bind_cpu_input(lay.attention_mask, self.ones[: n * kv_len].reshape(n, kv_len))
        self.session.run_with_iobinding(binding)
        return self.logits[: n * self.vocab].reshape(n, self.vocab)

    def close(self) -> None:
        self.bindings.clear()
        self.buffers = []


class DeviceStaticCache:
    """TensorRT: the same protocol on device memory. One arena holds every layer's cache; the past
    input and the present output of a layer are bound to the same device address (TensorRT's
    KV-cache update layer requires it), at the row range's offset. Only ids/positions/write/mask go
    up and only the last-position logits come down.

    Written from TensorRT's documentation (tensorrt11.md) against EngineSession's API; it has not
    run on a GPU here (no TensorRT, no GPU on these machines).
    """

    def __init__(self, backend, buckets, layout, slots: int, dtype: np.dtype, vocab: int):
        from trtcompile.runtime import cuda

        self.backend, self.buckets, self.layout = backend, buckets, layout
        self.slots, self.max_cache, self.vocab = slots, layout.max_cache, vocab
        self.dtype = np.dtype(dtype)
        self.row_bytes = layout.num_kv_heads * layout.max_cache * layout.head_dim * self.dtype.itemsize
        sizes = {name: slots * self.row_bytes for name in layout.past_inputs}
        self.offsets, total = cuda.layout(sizes)
        self.arena = cuda.DeviceArena(total)
        self._zero(total)
        self.ones = np.ones(slots * layout.max_cache, np.int64)
        self.touched: dict[str, object] = {}

    def kv_length(self, needed: int) -> int:
        """Always a prefix: an engine's graph has no whole-cache read (build/tensorrt_graph.py), so
        reading every slot would only be a longer prefix."""
        return prefix_length(needed, self.max_cache)

    def _zero(self, nbytes: int) -> None:
        # Slots past a row's length are masked, never read as values, but garbage there could be a
        # NaN bit pattern, and a masked NaN score still poisons a softmax: start from zeros.
        from trtcompile.runtime import cuda

        cuda.check(cuda._cudart().cudaMemset(self.arena.ptr, 0, nbytes), "cudaMemset")

    def _session(self, n: int, new: int, kv_len: int):
        dims = {"batch": n, "sequence": new, "kv_sequence": kv_len}
        fitting = [b for b in self.buckets if b.contains(dims)]
        if not fitting:
            raise ValueError(f"no bucket holds batch {n}, sequence {new}, kv_sequence {kv_len}")
        session = self.backend.session(min(fitting, key=lambda b: b.size()))
        self.touched[id(session)] = session
        return session

    def run(self, first: int, ids: np.ndarray, positions: np.ndarray, write: np.ndarray, kv_len: int) -> np.ndarray:
        n, new = ids.shape
        if int(write.max()) + new > self.max_cache:
            raise ValueError(f"a write of {new} tokens at {int(write.max())} overflows the cache of {self.max_cache}")
        lay = self.layout
        session = self._session(n, new, kv_len)
        lock = getattr(session, "lock", None)  # the session's own lock around a whole step, where it has one
        if lock is not None:
            lock.acquire()
        try:
            session.upload({lay.input_ids: ids, lay.position_ids: positions, lay.cache_position: write,
                            lay.attention_mask: self.ones[: n * kv_len].reshape(n, kv_len)})
            shape = (n, lay.num_kv_heads, self.max_cache, lay.head_dim)
            for past, present in zip(lay.past_inputs, lay.present_outputs):
                # Input and output on one address: TensorRT's KV-cache update writes in place.
                ptr = self.arena.ptr + self.offsets[past] + first * self.row_bytes
                session.bind(past, ptr)
                session.bind(present, ptr)
            session.set_input_shapes({name: shape for name in lay.past_inputs})
            session.enqueue()
            logits = session.download([lay.logits], copy=True)[lay.logits]
        finally:
            if lock is not None:
                lock.release()
        return logits.reshape(n, self.vocab)

    def close(self) -> None:
        for session in self.touched.values():
            if getattr(session, "context", None) is None:
                continue
            for name in [*self.layout.past_inputs, *self.layout.present_outputs]:
                if hasattr(session, "release"):  # hand the tensor back to the session's own buffer
                    session.release(name)
                else:
                    session.bind(name, session.tensors[name].device_ptr)
        self.touched = {}
        if self.arena is not None:
            self.arena.close()
            self.arena = None
