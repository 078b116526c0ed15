"""Text generation on a causal-LM package: prefill, then one decode step per new token.

    model = trtcompile.runtime.load("out/llama")
    tokens = model.generate(ids, attention_mask=mask, max_new_tokens=64)        # [batch, prompt + new]
    for step in model.stream(ids, max_new_tokens=64, do_sample=True, seed=0):   # [batch] per step
        ...
    handle = model.submit(prompt_ids, max_new_tokens=64)    # one row; iterate for ints, handle.cancel()

Batches are left-padded, as HF `generate` expects; positions follow HF (cumsum(mask) - 1, then +1
per step). A finished sequence (it produced a stop token) yields pad tokens while the others go
on, and the stream ends when every sequence has finished.

Static-cache packages (the default, export/kv_cache.py) run on runtime/scheduler.py: every row of
every call, from any number of threads, becomes one request in a slot of the model's one
preallocated cache (runtime/static_cache.py: the protocol and one implementation per backend);
prompts are prefilled in chunks, so a request may be as long as the cache; a call waits for free
slots (`timeout=` seconds, else forever) rather than racing for them. Each row samples with its
own generator (seeded per row), so a request's tokens do not depend on what else is running.

Concat-cache packages (`--kv-cache concat`, for TensorRT before 10.15) keep the single-request
loop below: a whole batch at a time, the cache in preallocated ping-pong buffers (ONNX Runtime
IOBinding, or device memory on TensorRT); concurrent calls queue on the model's lock.

Imports numpy and trtcompile.runtime only.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from trtcompile.runtime.manifest import PackageError
from trtcompile.runtime.shapes import Bucket, InputError

DEFAULT_MAX_NEW_TOKENS = 32


@dataclass(frozen=True)
class DecoderLayout:
    """The "generation" section of a causal-LM manifest."""

    input_ids: str
    attention_mask: str
    position_ids: str
    logits: str
    past_inputs: list[str]
    present_outputs: list[str]
    num_kv_heads: int
    head_dim: int
    eos_token_id: list[int]
    pad_token_id: int | None
    bos_token_id: int | None
    tokenizer_dir: str | None
    vocab_size: int | None
    kv_cache: str = "concat"  # "static" (TensorScatter, in place) or "concat" (present = past + new)
    cache_position: str | None = None
    max_cache: int = 0

    @classmethod
    def of(cls, model) -> "DecoderLayout":
        gen = model.manifest.data.get("generation")
        if not gen:
            raise PackageError(f"package {str(model.manifest.root)!r} has no 'generation' section in its manifest: "
                               f"it is not a causal LM with a KV cache; generate() needs one compiled from a "
                               f"*ForCausalLM / *LMHeadModel checkpoint")
        eos = gen.get("eos_token_id")
        eos = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
        return cls(gen.get("input_ids", "input_ids"), gen.get("attention_mask", "attention_mask"),
                   gen.get("position_ids", "position_ids"), gen.get("logits", "logits"),
                   list(gen["past_inputs"]), list(gen["present_outputs"]), int(gen["num_kv_heads"]),
                   int(gen["head_dim"]), eos, gen.get("pad_token_id"), gen.get("bos_token_id"),
                   gen.get("tokenizer_dir"), gen.get("vocab_size"), gen.get("kv_cache", "concat"),
                   gen.get("cache_position"), int(gen.get("max_cache") or 0))


@dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def check(self) -> None:
        if self.do_sample and not self.temperature > 0:
            raise InputError(f"temperature={self.temperature} must be > 0 when sampling; "
                             f"use do_sample=False for greedy decoding")
        if self.top_k < 0:
            raise InputError(f"top_k={self.top_k} must be >= 0 (0 = no top-k filtering)")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p={self.top_p} must be in (0, 1] (1 = no nucleus filtering)")


def choose_tokens(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator | None) -> np.ndarray:
    """Next token per row of [batch, vocab] logits: argmax, or a temperature/top-k/top-p sample."""
    if not sampling.do_sample:
        return logits.argmax(axis=-1).astype(np.int64)
    x = logits.astype(np.float64) / sampling.temperature
    vocab = x.shape[-1]
    if 0 < sampling.top_k < vocab:
        kth = np.partition(x, vocab - sampling.top_k, axis=-1)[:, vocab - sampling.top_k, None]
        x = np.where(x < kth, -np.inf, x)
    x -= x.max(axis=-1, keepdims=True)
    probs = np.exp(x)
    probs /= probs.sum(axis=-1, keepdims=True)
    if sampling.top_p < 1:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_probs = np.take_along_axis(probs, order, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the most likely token always stays).
        drop_sorted = (np.cumsum(sorted_probs, axis=-1) - sorted_probs) >= sampling.top_p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        probs = np.where(drop, 0.0, probs)
        probs /= probs.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return np.minimum((cdf <= u).sum(axis=-1), vocab - 1).astype(np.int64)


def _as_batch(input_ids, attention_mask) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] == 0 or ids.shape[0] == 0:
        raise InputError(f"input_ids has shape {list(np.shape(input_ids))}; pass token ids as [batch, prompt] "
                         f"(or [prompt]) with at least one token")
    if not np.issubdtype(ids.dtype, np.integer):
        raise InputError(f"input_ids has dtype {ids.dtype}; pass integer token ids")
    if attention_mask is None:
        mask = np.ones(ids.shape, np.int64)
    else:
        mask = np.asarray(attention_mask)
        if mask.ndim == 1:
            mask = mask[None, :]
        if mask.shape != ids.shape:
            raise InputError(f"attention_mask has shape {list(mask.shape)} but input_ids has {list(ids.shape)}; "
                             f"they must match")
        mask = (mask != 0).astype(np.int64)
    pads = ids.shape[1] - mask.sum(axis=1)
    for row in range(ids.shape[0]):
        if pads[row] == ids.shape[1]:
            raise InputError(f"attention_mask row {row} is all zeros: that prompt has no tokens")
        if mask[row, pads[row]:].min() == 0:
            raise InputError(f"attention_mask row {row} is {mask[row].tolist()}: prompts must be left-padded "
                             f"(zeros first, then ones); pad on the left, as HF tokenizers do with "
                             f"padding_side='left'")
    return ids.astype(np.int64), mask


def _fits(buckets: list[Bucket], **dims) -> bool:
    return any(b.contains(dims) and all(d in b.dims for d in dims) for b in buckets)


def check_request(buckets: list[Bucket], batch: int, prompt: int, max_new_tokens: int) -> None:
    """Raise InputError, naming the numbers and the bucket ranges, when the request does not fit."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens} must be >= 1")

    def ranges(dim: str, only_decode: bool = False) -> str:
        def decodes(b: Bucket) -> bool:  # takes one new token on top of a non-empty cache
            return b.contains({"sequence": 1}) and b.dims.get("past_sequence", (0, 0, 1))[2] >= 1

        return ", ".join(f"{b.name}: {lo}..{hi}" for b in buckets for d, (lo, _, hi) in b.dims.items()
                         if d == dim and (not only_decode or decodes(b)))

    if not _fits(buckets, batch=batch, sequence=prompt, past_sequence=0):
        raise InputError(f"a prompt of {prompt} tokens with batch {batch} fits no prefill bucket "
                         f"(sequence {ranges('sequence')}; batch {ranges('batch')}; past_sequence "
                         f"{ranges('past_sequence')}); shorten the prompt, split the batch, or recompile "
                         f"with a profile whose prefill bucket covers sequence {prompt}")
    # Decode steps feed the token from the step before: past grows from prompt to prompt+new-2.
    last_past = prompt + max_new_tokens - 2
    past = prompt
    while past <= last_past:  # jump bucket to bucket: as many iterations as buckets, not tokens
        reach = [b.dims["past_sequence"][2] for b in buckets if "past_sequence" in b.dims
                 and b.contains({"batch": batch, "sequence": 1, "past_sequence": past})]
        if reach:
            past = max(reach) + 1
        else:
            fit = past - prompt + 1  # new tokens that do fit
            raise InputError(
                f"prompt of {prompt} tokens + max_new_tokens {max_new_tokens} needs a context of "
                f"{prompt + max_new_tokens - 1} (decode past_sequence up to {last_past}), but no bucket holds "
                f"past_sequence {past} at batch {batch} (past_sequence {ranges('past_sequence', True)}; "
                f"batch {ranges('batch')}); ask for at most {fit} new tokens, shorten the prompt, or recompile "
                f"with a longer profile (e.g. profiles/decoder-long.yaml)")


def _kv_cache_for(model, layout: DecoderLayout, batch: int, capacity: int):
    """The model's KV cache object, reused when it is big enough, else replaced by a bigger one."""
    specs = {s.name: s for s in model.inputs}
    dtypes = [np.dtype(specs[n].dtype) for n in layout.past_inputs]
    per_token = [batch * layout.num_kv_heads * layout.head_dim] * len(layout.past_inputs)
    cache = getattr(model, "_kv_cache", None)
    assert cache is None or not cache.busy, "the concat cache is used under the model's lock only"
    if cache is None or not cache.fits(per_token, capacity, dtypes):
        if cache is not None:
            cache.close()
        backend = model.backend_name
        if backend == "onnxruntime" and hasattr(model.backend, "session"):
            cache = OrtKVCache(model, layout, per_token, capacity, dtypes)
        elif backend == "tensorrt" and hasattr(model.backend, "session"):
            cache = DeviceKVCache(model, layout, per_token, capacity, dtypes)
        else:
            cache = HostKVCache(model, layout, per_token, capacity, dtypes)
        model._kv_cache = cache
    return cache


class KVCache:
    """What the decode loop needs from a cache; the buffers are flat, so any batch and length whose
    product fits the elements allocated reuses them."""

    def __init__(self, model, layout: DecoderLayout, per_token: list[int], capacity: int, dtypes: list):
        self.model, self.layout = model, layout
        self.per_token, self.capacity, self.dtypes = per_token, capacity, dtypes
        self.elements = [k * capacity for k in per_token]
        self.busy = False
        self.batch = self.length = self.current = 0

    def fits(self, per_token, capacity, dtypes) -> bool:
        return dtypes == self.dtypes and all(k * capacity <= e for k, e in zip(per_token, self.elements))

    def start(self, batch: int) -> None:
        self.busy, self.batch, self.length, self.current = True, batch, 0, 0

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Run ids [batch, new] on top of the cache; return the last position's logits [batch, vocab]."""
        raise NotImplementedError

    def finish(self) -> None:
        self.busy = False

    def close(self) -> None:
        self.busy = False


class HostKVCache(KVCache):
    """Any backend through Model.run: present comes back as new arrays and becomes the next past.

    The fallback for backends without a bound-buffer path; it reallocates the cache every step.
    """

    def __init__(self, model, layout: DecoderLayout, per_token: list[int], capacity: int, dtypes: list):
        super().__init__(model, layout, per_token, capacity, dtypes)
        self.past: dict[str, np.ndarray] = {}

    def start(self, batch: int) -> None:
        super().start(batch)
        lay = self.layout
        self.past = {n: np.zeros((batch, lay.num_kv_heads, 0, lay.head_dim), dt)
                     for n, dt in zip(lay.past_inputs, self.dtypes)}

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        lay = self.layout
        feeds = {lay.input_ids: ids, lay.attention_mask: mask, lay.position_ids: positions, **self.past}
        out = self.model.run(feeds)
        self.past = {p: out[q] for p, q in zip(lay.past_inputs, lay.present_outputs)}
        return out[lay.logits][:, -1, :]

    def finish(self) -> None:
        self.past = {}
        super().finish()


class OrtKVCache(KVCache):
    """ONNX Runtime with IOBinding over two preallocated flat buffers per past tensor.

    A flat buffer viewed as [batch, heads, length, head_dim] is contiguous for every length, so
    step t reads past from buffer t % 2 and ONNX Runtime writes present (= past + the new
    position) into buffer (t + 1) % 2. The concat inside the graph is the only copy of the cache.
    """

    def __init__(self, model, layout: DecoderLayout, per_token: list[int], capacity: int, dtypes: list):
        super().__init__(model, layout, per_token, capacity, dtypes)
        self.session = model.backend.session
        self.buffers = [[np.empty(n, dt) for n, dt in zip(self.elements, dtypes)] for _ in range(2)]
        logits_spec = next(s for s in model.outputs if s.name == layout.logits)
        self.logits_dtype = np.dtype(logits_spec.dtype)
        self.vocab = int(logits_spec.shape[-1])
        self.last_only = logits_spec.shape[1] == 1  # last-position logits (the default export)
        self.logits = np.empty(0, self.logits_dtype)
        self.binding = self.session.io_binding()

    def _shape(self, length: int) -> list[int]:
        return [self.batch, self.layout.num_kv_heads, length, self.layout.head_dim]

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        lay, bind = self.layout, self.binding
        new = ids.shape[1]
        assert np.prod(self._shape(self.length + new)) <= self.elements[0], "KV cache overflow"
        bind.clear_binding_inputs()
        bind.clear_binding_outputs()
        bind.bind_cpu_input(lay.input_ids, ids)
        bind.bind_cpu_input(lay.attention_mask, mask)
        bind.bind_cpu_input(lay.position_ids, positions)
        src, dst = self.buffers[self.current], self.buffers[1 - self.current]
        for name, buf, dt in zip(lay.past_inputs, src, self.dtypes):
            bind.bind_input(name, "cpu", 0, dt, self._shape(self.length), buf.ctypes.data)
        for name, buf, dt in zip(lay.present_outputs, dst, self.dtypes):
            bind.bind_output(name, "cpu", 0, dt, self._shape(self.length + new), buf.ctypes.data)
        positions_out = 1 if self.last_only else new
        need = self.batch * positions_out * self.vocab
        if self.logits.size < need:
            self.logits = np.empty(need, self.logits_dtype)
        bind.bind_output(lay.logits, "cpu", 0, self.logits_dtype, [self.batch, positions_out, self.vocab],
                         self.logits.ctypes.data)
        self.session.run_with_iobinding(bind)
        self.length += new
        self.current = 1 - self.current
        return self.logits[:need].reshape(self.batch, positions_out, self.vocab)[:, -1, :]

    def close(self) -> None:
        self.buffers = [[], []]
        super().close()


class GenerationTimeout(TimeoutError):
    """Every slot stayed busy for longer than the call's `timeout`."""


def _check_ids(layout: DecoderLayout, ids: np.ndarray) -> None:
    if layout.vocab_size and (ids.min() < 0 or ids.max() >= layout.vocab_size):
        bad = int(ids.min() if ids.min() < 0 else ids.max())
        raise InputError(f"input_ids holds token id {bad}, outside this model's vocabulary 0..{layout.vocab_size - 1}; "
                         f"padding positions too must hold a valid id (e.g. the pad or eos id)")


def _stops_and_pad(layout: DecoderLayout, stop_tokens, pad_token_id) -> tuple[np.ndarray, int]:
    stops = np.asarray(layout.eos_token_id if stop_tokens is None else list(stop_tokens), np.int64)
    pad = pad_token_id if pad_token_id is not None else layout.pad_token_id
    if pad is None:
        pad = int(stops[0]) if stops.size else 0
    return stops, int(pad)


def check_static_request(layout: DecoderLayout, prompt: int, max_new_tokens: int) -> None:
    """A static-cache request fits when its whole context fits one row of the cache."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens} must be >= 1")
    context = prompt + max_new_tokens - 1  # the last token is sampled, never written
    if context > layout.max_cache:
        fit = layout.max_cache - prompt + 1
        advice = f"ask for at most {fit} new tokens, or shorten the prompt" if fit >= 1 else "shorten the prompt"
        raise InputError(f"prompt of {prompt} tokens + max_new_tokens {max_new_tokens} needs a context of {context}, "
                         f"but this package's KV cache holds {layout.max_cache} positions per sequence; {advice}, or "
                         f"recompile with a profile whose kv_sequence reaches {context}")


def stream(model, input_ids, attention_mask=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, *,
           do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           seed: int | None = None, stop_tokens=None, pad_token_id: int | None = None,
           timeout: float | None = None) -> Iterator[np.ndarray]:
    """Yield the next token of every sequence, [batch] int64, one step at a time.

    A sequence that has produced a stop token yields `pad_token_id` from then on; iteration ends
    after max_new_tokens steps or when every sequence has stopped. stop_tokens defaults to the
    package's eos ids (pass [] to never stop early). Safe to call from many threads at once; when
    the model is busy the call waits, at most `timeout` seconds (then GenerationTimeout).
    """
    layout = DecoderLayout.of(model)
    sampling = Sampling(do_sample, float(temperature), int(top_k), float(top_p))
    sampling.check()
    ids, mask = _as_batch(input_ids, attention_mask)
    _check_ids(layout, ids)
    batch, prompt = ids.shape
    max_new_tokens = int(max_new_tokens)
    stops, pad = _stops_and_pad(layout, stop_tokens, pad_token_id)
    if layout.kv_cache == "static":
        pads = prompt - mask.sum(axis=1)
        rows = [ids[row, pads[row]:] for row in range(batch)]
        check_static_request(layout, max(len(r) for r in rows), max_new_tokens)
        return _static_stream(model, layout, rows, max_new_tokens, sampling, seed, stops, pad, timeout)
    check_request(model.buckets, batch, prompt, max_new_tokens)
    rng = np.random.default_rng(seed) if do_sample else None
    return _locked(model, timeout, _decode_loop(model, layout, ids, mask, max_new_tokens, sampling, rng, stops, pad))


def _row_chooser(sampling: Sampling, seed: int | None, row: int):
    """Token choice for one request row, with its own generator: seeded per row, so what a row
    samples does not depend on the rows it happens to share decode steps with."""
    if not sampling.do_sample:
        return lambda logits: int(logits.argmax())
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(row,)) if seed is not None else None)
    return lambda logits: int(choose_tokens(logits, sampling, rng)[0])


def submit(model, prompt_ids, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, *, do_sample: bool = False,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int | None = None,
           stop_tokens=None):
    """Queue one prompt (1-D token ids, no padding) on a static-cache model and return its request
    at once: iterate it for the new token ids (ints) as they come, `cancel()` it to free its slot
    (e.g. when a client disconnects). The lower-level form of stream(); does not wait for a slot."""
    from trtcompile.runtime.scheduler import Request

    layout = DecoderLayout.of(model)
    if layout.kv_cache != "static":
        raise PackageError("submit() needs a static-cache package (compiled with --kv-cache static, the default)")
    sampling = Sampling(do_sample, float(temperature), int(top_k), float(top_p))
    sampling.check()
    ids, _ = _as_batch(prompt_ids, None)
    if ids.shape[0] != 1:
        raise InputError(f"submit() takes one prompt (1-D ids), got shape {list(ids.shape)}; use stream() for batches")
    _check_ids(layout, ids)
    check_static_request(layout, ids.shape[1], int(max_new_tokens))
    stops, _ = _stops_and_pad(layout, stop_tokens, None)
    request = Request(ids[0], int(max_new_tokens), _row_chooser(sampling, seed, 0), set(stops.tolist()))
    return scheduler_for(model, layout).submit(request)


_SCHEDULER_LOCK = threading.Lock()


def scheduler_for(model, layout: DecoderLayout):
    """The model's one scheduler (and cache), created on first use by whichever thread gets here first."""
    with _SCHEDULER_LOCK:
        scheduler = getattr(model, "_scheduler", None)
        if scheduler is None:
            from trtcompile.runtime.scheduler import Scheduler

            cache = _static_cache_for(model, layout)
            prefill = [b.dims["sequence"][2] for b in model.buckets if "sequence" in b.dims]
            scheduler = model._scheduler = Scheduler(cache, prefill_chunk=max(prefill or [layout.max_cache]))
        return scheduler


def slots_of(model) -> int | None:
    """How many requests the model decodes at once: a static-cache package's slots (the most rows a
    decode call takes, the profile's decode batch); None for other packages (one request at a time)."""
    gen = model.manifest.data.get("generation") or {}
    if gen.get("kv_cache") != "static":
        return None
    decode = [b.dims["batch"][2] for b in model.buckets if b.dims.get("sequence", (0, 0, 0))[2] == 1
              and "batch" in b.dims]
    return int(max(decode or [b.dims["batch"][2] for b in model.buckets if "batch" in b.dims] or [1]))


def _static_cache_for(model, layout: DecoderLayout):
    specs = {s.name: s for s in model.inputs}
    logits_spec = next(s for s in model.outputs if s.name == layout.logits)
    dtype = np.dtype(specs[layout.past_inputs[0]].dtype)
    vocab = int(logits_spec.shape[-1])
    slots = slots_of(model)
    if model.backend_name == "onnxruntime":
        from trtcompile.runtime.static_cache import OrtStaticCache

        return OrtStaticCache(model.backend.session, layout, slots, dtype, vocab, np.dtype(logits_spec.dtype))
    from trtcompile.runtime.static_cache import DeviceStaticCache

    return DeviceStaticCache(model.backend, model.buckets, layout, slots, dtype, vocab)


def _static_stream(model, layout, rows, max_new_tokens, sampling, seed, stops, pad, timeout):
    from trtcompile.runtime.scheduler import Request

    scheduler = scheduler_for(model, layout)
    stop_set = set(stops.tolist())
    requests = [Request(r, max_new_tokens, _row_chooser(sampling, seed, i), stop_set) for i, r in enumerate(rows)]
    for request in requests:
        scheduler.submit(request)
    try:
        if not scheduler.wait_admitted(requests, timeout):
            raise GenerationTimeout(f"all {len(scheduler.rows)} generation slots of this model stayed busy for "
                                    f"{timeout} s; retry later, raise timeout=, or recompile with a larger decode "
                                    f"batch (slots)")
        streams = [iter(r) for r in requests]
        done = [False] * len(requests)
        while True:
            step = np.full(len(requests), pad, np.int64)
            for i, it in enumerate(streams):
                if not done[i]:
                    token = next(it, None)
                    if token is None:
                        done[i] = True
                    else:
                        step[i] = token
            if all(done):
                return
            yield step
    finally:
        scheduler.cancel([r for r in requests if not r.finished])


_LOCKS_LOCK = threading.Lock()


def _locked(model, timeout, loop):
    """Run the concat cache's single-request loop holding the model's lock (waiting for it)."""
    with _LOCKS_LOCK:
        lock = model.__dict__.setdefault("_generate_lock", threading.Lock())
    if not lock.acquire(timeout=-1 if timeout is None else timeout):
        raise GenerationTimeout(f"another generate()/stream() held this model for {timeout} s; retry later or "
                                f"raise timeout=")
    try:
        yield from loop
    finally:
        loop.close()
        lock.release()


def _decode_loop(model, layout, ids, mask, max_new_tokens, sampling, rng, stops, pad) -> Iterator[np.ndarray]:
    batch, prompt = ids.shape
    cache = _kv_cache_for(model, layout, batch, prompt + max_new_tokens - 1)
    cache.start(batch)
    try:
        # HF's positions: cumsum of the mask - 1, pads at 0, then +1 per generated token.
        positions = np.where(mask == 1, np.cumsum(mask, axis=1) - 1, 0).astype(np.int64)
        pads = prompt - mask.sum(axis=1)
        full_mask = (np.arange(prompt + max_new_tokens)[None, :] >= pads[:, None]).astype(np.int64)
        logits = cache.step(ids, mask, positions)
        next_pos = positions[:, -1:] + 1
        done = np.zeros(batch, bool)
        for step in range(max_new_tokens):
            tokens = choose_tokens(logits, sampling, rng)
            tokens = np.where(done, pad, tokens)
            done |= np.isin(tokens, stops)
            yield tokens
            if done.all() or step == max_new_tokens - 1:
                return
            length = prompt + step + 1
            logits = cache.step(tokens[:, None], np.ascontiguousarray(full_mask[:, :length]), next_pos)
            next_pos = next_pos + 1
    finally:
        cache.finish()  # also when the caller stops iterating early


def generate(model, input_ids, attention_mask=None, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, *,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int | None = None, stop_tokens=None, pad_token_id: int | None = None,
             timeout: float | None = None) -> np.ndarray:
    """The prompt followed by the new tokens, [batch, prompt + steps] int64, like HF `generate`.

    steps <= max_new_tokens: it is shorter when every sequence stopped early; sequences that
    stopped before the others are filled with pad_token_id. Thread-safe (see stream()).
    """
    ids, _ = _as_batch(input_ids, attention_mask)
    steps = list(stream(model, input_ids, attention_mask, max_new_tokens, do_sample=do_sample,
                        temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, stop_tokens=stop_tokens,
                        pad_token_id=pad_token_id, timeout=timeout))
    return np.concatenate([ids, np.stack(steps, axis=1)], axis=1)


# --- TensorRT: the KV cache in device memory -----------------------------------------------------


class DeviceKVCache(KVCache):
    """TensorRT backend: the cache in two device arenas, bound straight to the engines' past/present.

    Step t binds every past input to arena t % 2 and every present output to arena (t + 1) % 2
    (EngineSession.bind), sets the past shapes, uploads only ids/mask/positions, and downloads
    only the logits: the cache never leaves the device. Prefill and decode run on different
    buckets' engines (each with its own stream); the per-step logits download synchronizes, so
    the next engine always reads a finished cache. CUDA graphs are off while generating (shapes
    change every step), and `finish` rebinds each session's own buffers so Model.run works after.
    """

    def __init__(self, model, layout: DecoderLayout, per_token: list[int], capacity: int, dtypes: list):
        from trtcompile.runtime import cuda

        super().__init__(model, layout, per_token, capacity, dtypes)
        sizes = {n: e * dt.itemsize for n, e, dt in zip(layout.past_inputs, self.elements, dtypes)}
        self.offsets, total = cuda.layout(sizes)
        self.touched: dict[str, tuple] = {}  # bucket name -> (session, its cuda_graphs setting)
        self.arenas = [cuda.DeviceArena(total)]
        try:
            self.arenas.append(cuda.DeviceArena(total))
        except BaseException:
            self.close()
            raise

    def _session(self, new: int):
        dims = {"batch": self.batch, "sequence": new, "past_sequence": self.length}
        bucket = min((b for b in self.model.buckets if b.contains(dims)), key=Bucket.size)
        session = self.model.backend.session(bucket)
        if bucket.name not in self.touched:
            self.touched[bucket.name] = (session, session.cuda_graphs)
            session.cuda_graphs = False
        return session

    def step(self, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        lay, new = self.layout, ids.shape[1]
        session = self._session(new)
        session.upload({lay.input_ids: ids, lay.attention_mask: mask, lay.position_ids: positions})
        src, dst = self.arenas[self.current].ptr, self.arenas[1 - self.current].ptr
        for past, present in zip(lay.past_inputs, lay.present_outputs):
            session.bind(past, src + self.offsets[past])
            session.bind(present, dst + self.offsets[past])
        shape = (self.batch, lay.num_kv_heads, self.length, lay.head_dim)
        session.set_input_shapes({name: shape for name in lay.past_inputs})
        session.enqueue()
        logits = session.download([lay.logits], copy=False)[lay.logits]
        self.length += new
        self.current = 1 - self.current
        return logits[:, -1, :]

    def finish(self) -> None:
        for session, graphs in self.touched.values():
            if session.context is None:  # the backend was closed first
                continue
            for name in [*self.layout.past_inputs, *self.layout.present_outputs]:
                session.bind(name, session.tensors[name].device_ptr)
            session.cuda_graphs = graphs
        self.touched = {}
        super().finish()

    def close(self) -> None:
        self.finish()
        for arena in self.arenas:
            arena.close()
        self.arenas = []
        super().close()
