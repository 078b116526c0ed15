"""Buffers per bucket (sizes against a hand-computed case), their ownership, and plan reading.

Addresses here are plain integers: Bindings only decides which address each tensor uses and
which buffer a host copy may touch; the same decisions with real device memory run in
test_cuda_gpu.py where a GPU is present.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from trtcompile.runtime.buffers import Bindings, device_resident_tensors, memory_report, plan_buffers
from trtcompile.runtime.manifest import Manifest
from trtcompile.runtime.plan_reader import HashingPlanReader
from trtcompile.runtime.shapes import Bucket, TensorSpec

PAST = ["past_key_values.0.key", "past_key_values.0.value"]
PRESENT = ["present.0.key", "present.0.value"]


def decoder_specs(logits_shape):
    inputs = [TensorSpec("input_ids", "int64", ["batch", "sequence"]),
              TensorSpec("attention_mask", "int64", ["batch", "past_sequence+sequence"]),
              TensorSpec("position_ids", "int64", ["batch", "sequence"])]
    inputs += [TensorSpec(n, "float32", ["batch", 2, "past_sequence", 8]) for n in PAST]
    outputs = [TensorSpec("logits", "float32", logits_shape)]
    outputs += [TensorSpec(n, "float32", ["batch", 2, "past_sequence+sequence", 8]) for n in PRESENT]
    return inputs, outputs


PREFILL = Bucket("prefill", {"batch": (1, 1, 2), "sequence": (1, 16, 32), "past_sequence": (0, 0, 0)})
DECODE = Bucket("decode", {"batch": (1, 1, 2), "sequence": (1, 1, 1), "past_sequence": (1, 64, 127)})


def test_buffers_are_sized_by_each_tensors_real_need_per_bucket():
    # Last-position logits [batch, 1, vocab=100] (issue #11's generation graphs), K/V device-only.
    inputs, outputs = decoder_specs(["batch", 1, 100])
    resident = set(PAST + PRESENT)

    prefill = plan_buffers(inputs, outputs, PREFILL, resident)
    # ids, mask, positions: 2*32 int64 = 512 B each; logits 2*1*100 float32 = 800 B -> 1024 aligned.
    assert prefill.staged_offsets == {"input_ids": 0, "attention_mask": 512, "position_ids": 1024, "logits": 1536}
    assert (prefill.device_bytes, prefill.pinned_bytes) == (2560, 2560)
    # K/V: past [2,2,0,8] is empty (1 aligned slot each), present [2,2,32,8] float32 = 4096 B.
    assert prefill.resident_offsets == {PAST[0]: 0, PAST[1]: 256, PRESENT[0]: 512, PRESENT[1]: 4608}
    assert prefill.resident_bytes == 8704

    decode = plan_buffers(inputs, outputs, DECODE, resident)
    # ids/positions 2*1 int64 = 16 B (256 aligned), mask 2*128 int64 = 2048 B, logits 800 B.
    assert decode.staged_offsets == {"input_ids": 0, "attention_mask": 256, "position_ids": 2304, "logits": 2560}
    assert (decode.device_bytes, decode.pinned_bytes) == (3584, 3584)
    # past [2,2,127,8] float32 = 16256 B (16384 aligned), present [2,2,128,8] = 16384 B.
    assert decode.resident_bytes == 65536
    assert not any(decode.tensors[n].resident for n in ("input_ids", "logits"))


def test_full_sequence_logits_and_host_kv_cost_what_they_say():
    # The same prefill with [batch, sequence, vocab] logits and K/V staged through the host.
    inputs, outputs = decoder_specs(["batch", "sequence", 100])
    plan = plan_buffers(inputs, outputs, PREFILL, resident=set())
    assert plan.tensors["logits"].nbytes == 2 * 32 * 100 * 4 == 25600
    assert plan.pinned_bytes == 512 * 3 + 25600 + 256 * 2 + 4096 * 2  # = 35840: every tensor has a pinned copy
    assert plan.resident_bytes == 0


def test_memory_report_per_bucket_and_weights_once():
    inputs, outputs = decoder_specs(["batch", 1, 100])
    data = {"schema_version": 1, "inputs": [s.to_dict() for s in inputs], "outputs": [s.to_dict() for s in outputs],
            "buckets": [PREFILL.to_dict(), DECODE.to_dict()],
            "generation": {"past_inputs": PAST, "present_outputs": PRESENT},
            "engines": [{"file": "engines/model.plan", "bytes": 7 << 20,
                         "profiles": [{"bucket": "prefill", "index": 0, "context_memory_bytes": 3 << 20},
                                      {"bucket": "decode", "index": 1, "context_memory_bytes": 1 << 20}]}]}
    assert device_resident_tensors(data) == set(PAST + PRESENT)
    rows, weights = memory_report(Manifest(None, data))
    assert [(r.bucket, r.engine_file, r.profile, r.device_io_bytes, r.pinned_bytes, r.resident_bytes, r.context_bytes)
            for r in rows] == [("prefill", "engines/model.plan", 0, 2560, 2560, 8704, 3 << 20),
                               ("decode", "engines/model.plan", 1, 3584, 3584, 65536, 1 << 20)]
    assert weights == {"engines/model.plan": 7 << 20}


# --- ownership -------------------------------------------------------------------------------

OWN = 0x100000
RESIDENT = 0x200000
CACHE = [0x900000, 0xA00000]  # a generation's two cache arenas (ping-pong)
CACHE_BYTES = 0x100000


class Recorder:
    """Stands where IExecutionContext.set_tensor_address is called: the addresses TensorRT would use."""

    def __init__(self):
        self.context: dict[str, int] = {}
        self.calls = 0

    def __call__(self, name, ptr):
        self.context[name], self.calls = ptr, self.calls + 1


def session_bindings():
    inputs, outputs = decoder_specs(["batch", 1, 100])
    plan = plan_buffers(inputs, outputs, DECODE, set(PAST + PRESENT))
    own = {n: (OWN + plan.staged_offsets[n] if n in plan.staged_offsets else 0) for n in plan.tensors}
    allocations = []

    def allocate():
        allocations.append(plan.resident_bytes)
        return {n: RESIDENT + o for n, o in plan.resident_offsets.items()}

    recorder = Recorder()
    return Bindings(own, recorder, allocate), recorder, allocations, plan


def in_cache(ptr: int) -> bool:
    return any(base <= ptr < base + CACHE_BYTES for base in CACHE)


def generation_step(bindings: Bindings, step: int):
    """What DeviceKVCache does each step: past from one arena, present into the other."""
    src, dst = CACHE[step % 2], CACHE[1 - step % 2]
    for i, (past, present) in enumerate(zip(PAST, PRESENT)):
        bindings.bind(past, src + i * 0x10000)
        bindings.bind(present, dst + i * 0x10000)
    targets = [bindings.upload_target(n) for n in ("input_ids", "attention_mask", "position_ids")]
    return targets, bindings.download_source("logits")


def test_run_while_a_generation_is_paused_never_touches_its_cache():
    bindings, recorder, allocations, plan = session_bindings()
    assert allocations == []  # K/V buffers of its own: not allocated while nobody needs them

    targets, logits = generation_step(bindings, 0)
    assert not any(in_cache(p) for p in targets) and logits == bindings.own["logits"]
    assert all(in_cache(recorder.context[n]) for n in PAST + PRESENT)
    assert bindings.download_source(PRESENT[0]) == CACHE[1]  # read from where the engine wrote it
    live_cache = {n: recorder.context[n] for n in PAST + PRESENT}

    # Paused stream; Model.run on the same session with host K/V (what EngineSession.run does):
    bindings.own_everything(plan.tensors)
    uploads = [bindings.upload_target(n) for n in ("input_ids", "attention_mask", "position_ids", *PAST)]
    downloads = [bindings.download_source(n) for n in ("logits", *PRESENT)]
    assert allocations == [plan.resident_bytes]  # the K/V buffers of its own, allocated once, now
    assert not any(in_cache(p) for p in uploads + downloads)
    assert not any(in_cache(recorder.context[n]) for n in plan.tensors)  # the engine reads/writes none of it
    assert {n: recorder.context[n] for n in PAST + PRESENT} == {n: RESIDENT + plan.resident_offsets[n]
                                                                   for n in PAST + PRESENT}

    # The stream resumes: the next step binds its cache again, the other way round.
    generation_step(bindings, 1)
    assert all(in_cache(recorder.context[n]) for n in PAST + PRESENT)
    assert {recorder.context[n] for n in PRESENT} == {live_cache[n] for n in PAST}
    generation_step(bindings, 2)
    assert allocations == [plan.resident_bytes]  # still one allocation


def test_uploading_into_a_bound_input_repoints_it_at_the_own_buffer():
    bindings, recorder, _, plan = session_bindings()
    bindings.bind(PAST[0], CACHE[0])
    assert bindings.is_external(PAST[0])
    target = bindings.upload_target(PAST[0])
    assert target == RESIDENT + plan.resident_offsets[PAST[0]] == recorder.context[PAST[0]]
    assert not bindings.is_external(PAST[0])


def test_binding_the_own_address_or_zero_releases():
    bindings, recorder, allocations, _ = session_bindings()
    bindings.bind(PAST[0], CACHE[0])
    bindings.bind(PAST[0], bindings.own[PAST[0]])  # DeviceKVCache.finish: tensors[name].device_ptr, 0 if never allocated
    assert not bindings.is_external(PAST[0]) and allocations == []
    bindings.ensure_addresses()  # the next enqueue gives it an address of its own
    assert recorder.context[PAST[0]] == bindings.own[PAST[0]] != 0
    bindings.bind("logits", CACHE[1])
    bindings.bind("logits", bindings.own["logits"])
    assert recorder.context["logits"] == OWN + 2560


def test_bad_bindings_are_refused():
    bindings, *_ = session_bindings()
    with pytest.raises(ValueError, match="256-byte aligned"):
        bindings.bind(PAST[0], CACHE[0] + 8)
    with pytest.raises(KeyError, match="no I/O tensor 'nope'"):
        bindings.bind("nope", CACHE[0])
    with pytest.raises(RuntimeError, match="nothing was run with it"):
        bindings.download_source(PRESENT[0])


def test_unchanged_addresses_are_not_set_again():
    bindings, recorder, *_ = session_bindings()
    generation_step(bindings, 0)
    calls = recorder.calls
    generation_step(bindings, 0)  # same addresses: no set_tensor_address calls
    assert recorder.calls == calls


# --- plans read in chunks, hashed as they are read ---------------------------------------------

def test_plan_reader_hashes_the_whole_file_whatever_the_reads(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 10_000, dtype=np.uint8).tobytes()
    path = tmp_path / "engine.plan"
    path.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()

    reader = HashingPlanReader(path, chunk=1024)
    chunks = []
    while chunk := reader.read(4096):
        assert len(chunk) <= 1024  # never more host memory than a chunk per read
        chunks.append(chunk)
    assert b"".join(chunks) == data and reader.hexdigest() == want and reader.bytes_read == len(data)
    reader.close()

    reader = HashingPlanReader(path, chunk=1024)
    assert reader.read(100) == data[:100]
    assert reader.seek(0, os.SEEK_SET) and reader.read(50) == data[:50]  # re-read: not hashed twice
    assert reader.seek(5000, os.SEEK_SET) and reader.read(100) == data[5000:5100]  # skipped: hashed at the end
    assert reader.seek(-10, os.SEEK_END) and reader.read(10) == data[-10:]
    assert reader.hexdigest() == want
    assert not reader.seek(-1, os.SEEK_SET)
    reader.close()


def test_an_output_written_in_place_shares_its_inputs_buffer():
    # A static cache updated in place (TensorRT's KV-cache update layer aliases present to past and
    # wants one address for both): the output gets no memory of its own.
    inputs = [TensorSpec("input_ids", "int64", ["batch", "sequence"]),
              TensorSpec("cache.key", "float32", ["batch", 2, 128, 8])]
    outputs = [TensorSpec("logits", "float32", ["batch", 1, 100]),
               TensorSpec("cache_out.key", "float32", ["batch", 2, 128, 8])]
    plan = plan_buffers(inputs, outputs, DECODE, {"cache.key", "cache_out.key"},
                        aliases={"cache_out.key": "cache.key"})
    assert plan.resident_offsets == {"cache.key": 0} and plan.resident_bytes == 2 * 2 * 128 * 8 * 4
    assert plan.offset_of("cache_out.key", plan.resident_offsets) == plan.offset_of("cache.key", plan.resident_offsets)
    # Aliased but not declared device-resident: it still shares the input's (staged) slice.
    staged = plan_buffers(inputs, outputs, DECODE, set(), aliases={"cache_out.key": "cache.key"})
    assert "cache_out.key" not in staged.staged_offsets
    assert staged.offset_of("cache_out.key", staged.staged_offsets) == staged.staged_offsets["cache.key"]
    from trtcompile.runtime.manifest import PackageError

    with pytest.raises(PackageError, match="writes input 'input_ids' in place"):
        plan_buffers(inputs, outputs, DECODE, set(), aliases={"cache_out.key": "input_ids"})
