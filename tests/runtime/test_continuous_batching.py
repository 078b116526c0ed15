"""Chunked prefill and continuous batching on a static-cache package: many threads, one model.

The package has a small prefill bucket (32 tokens) and 4 decode slots, so long prompts are written
in chunks and 8 concurrent callers have to wait for slots. Every request must come back exactly as
the same request run alone (and greedy runs as HF `generate`).
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
import torch

from decoder_packages import compiled_decoder, hf_model
from trtcompile import runtime
from trtcompile.runtime.generate import GenerationTimeout

PREFILL, SLOTS = 32, 4
PROFILE = {
    "inputs": {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "kv_sequence"],
               "position_ids": ["batch", "sequence"], "cache_position": ["batch"],
               "past_key_values.*": ["batch", "_", "_", "_"]},
    "buckets": {"prefill": {"batch": [1, 1, 1], "sequence": [1, 16, PREFILL], "kv_sequence": [1, 32, 256]},
                "decode": {"batch": [1, 1, SLOTS], "sequence": [1, 1, 1], "kv_sequence": [1, 64, 256]}},
}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return compiled_decoder("llama", tmp_path_factory.mktemp("decoders"), profile=PROFILE)


@pytest.fixture(scope="module")
def model(package):
    with runtime.load(package, backend="onnxruntime", threads=1) as m:
        yield m


def requests(count: int, seed: int = 3) -> list[dict]:
    """Different prompt lengths (some chunked), max_new_tokens and stop tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        length = int(rng.integers(1, 3 * PREFILL + 1))
        out.append({"ids": rng.integers(3, 128, size=length).astype(np.int64),
                    "max_new_tokens": int(rng.integers(4, 40)),
                    "stop_tokens": [int(rng.integers(3, 128))] if i % 2 else []})
    return out


def run_one(model, request: dict, **options) -> np.ndarray:
    return model.generate(request["ids"][None], max_new_tokens=request["max_new_tokens"],
                          stop_tokens=request["stop_tokens"], **options)[0]


def test_prompt_three_times_the_prefill_bucket_matches_hf(model):
    ids = np.random.default_rng(0).integers(3, 128, size=(1, 3 * PREFILL)).astype(np.int64)
    with torch.inference_mode():
        expected = hf_model("llama").generate(input_ids=torch.from_numpy(ids), max_new_tokens=64, do_sample=False,
                                              pad_token_id=0).numpy()
    assert model.slots == SLOTS
    np.testing.assert_array_equal(model.generate(ids, max_new_tokens=64), expected)
    # The context passed half the cache (160 of 256): the last steps read the whole cache in place.
    assert model._scheduler.stats["whole_cache_reads"] > 0


def test_eight_staggered_threads_each_get_their_own_tokens(model):
    reqs = requests(8)
    alone = [run_one(model, r) for r in reqs]
    results, errors = [None] * len(reqs), []

    def worker(i):
        try:
            time.sleep(0.003 * i)  # staggered: later ones arrive while earlier ones decode
            results[i] = run_one(model, reqs[i])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    stats = model._scheduler.stats
    stats["peak_rows"] = 0
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert stats["peak_rows"] > 1, "the requests never shared a decode step"
    for i, (got, want) in enumerate(zip(results, alone)):
        np.testing.assert_array_equal(got, want, err_msg=f"request {i}")


def test_seeded_sampling_is_reproducible_per_request_under_load(model):
    ids = np.random.default_rng(5).integers(3, 128, size=(1, 20)).astype(np.int64)
    opts = dict(max_new_tokens=24, do_sample=True, temperature=1.3, top_k=40, top_p=0.95, stop_tokens=[])
    alone = model.generate(ids, seed=11, **opts)
    busy = [threading.Thread(target=run_one, args=(model, r)) for r in requests(4, seed=9)]
    for t in busy:
        t.start()
    under_load = model.generate(ids, seed=11, **opts)
    for t in busy:
        t.join(timeout=120)
    np.testing.assert_array_equal(under_load, alone)
    assert (model.generate(ids, seed=12, **opts) != alone).any()


def test_stream_close_and_submit_cancel_free_their_slots(model):
    ids = np.arange(3, 13, dtype=np.int64)
    streams = [model.stream(ids[None], max_new_tokens=200, stop_tokens=[]) for _ in range(SLOTS)]
    for s in streams:
        next(s)
    for s in streams:
        s.close()  # an abandoned stream cancels its rows
    handle = model.submit(ids, max_new_tokens=200, stop_tokens=[])
    first = next(iter(handle))
    handle.cancel()
    assert isinstance(first, int) and len(list(handle)) < 200
    # Every slot is free again: a full batch of SLOTS rows runs and matches its rows run alone.
    batch = np.stack([ids] * SLOTS)
    np.testing.assert_array_equal(model.generate(batch, max_new_tokens=8, stop_tokens=[])[0],
                                  model.generate(ids[None], max_new_tokens=8, stop_tokens=[])[0])


def test_a_stalled_model_times_out_instead_of_racing(model):
    from trtcompile.runtime.generate import scheduler_for, DecoderLayout

    scheduler = scheduler_for(model, DecoderLayout.of(model))
    with scheduler.wakeup:  # the decode loop cannot admit anything while this is held
        with pytest.raises(GenerationTimeout, match="slots of this model stayed busy for 0.2 s"):
            model.generate(np.array([[5, 6, 7]]), max_new_tokens=4, timeout=0.2)
    assert not scheduler.waiting  # the timed-out request was withdrawn
    assert model.generate(np.array([[5, 6, 7]]), max_new_tokens=4, stop_tokens=[]).shape == (1, 7)


@pytest.mark.slow
def test_stress_many_threads_with_constant_switching(model):
    reqs = [{**r, "max_new_tokens": min(r["max_new_tokens"], 10)} for r in requests(12, seed=21)]
    alone = [run_one(model, r) for r in reqs]
    wrong, errors = [], []

    def worker(k):
        for j in range(3):
            i = (k + j) % len(reqs)
            try:
                got = run_one(model, reqs[i])
                if got.shape != alone[i].shape or (got != alone[i]).any():
                    wrong.append(i)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    finally:
        sys.setswitchinterval(old)
    assert not errors and not wrong, (errors[:3], wrong)
    assert model._scheduler.stats["peak_rows"] == SLOTS
