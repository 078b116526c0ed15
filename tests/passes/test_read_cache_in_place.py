import numpy as np
import onnx_graphsurgeon as gs
import pytest

from fusion_helpers import Builder, apply, assert_same, ops
from trtcompile.passes.read_cache_in_place import read_cache_in_place

HEADS, KV_HEADS, MAX, DIM = 4, 2, 16, 8


def _static_attention(cache_dtype=np.float32):
    #  past_k ── TensorScatter(new_k, write) ── present_k ── Slice(0:L, axis 2) ── [Cast] ──┐
    #  past_v ── TensorScatter(new_v, write) ── present_v ── Slice(0:L, axis 2) ── [Cast] ──┼── Attention ── y
    #  q, mask [1, 1, 1, L] ───────────────────────────────────────────────────────────────┘
    b = Builder()
    q = gs.Variable("q", dtype=np.float32, shape=[1, HEADS, 1, DIM])
    mask = gs.Variable("mask", dtype=np.bool_, shape=[1, 1, 1, "L"])
    write = gs.Variable("write", dtype=np.int64, shape=[1])
    inputs, outputs, kv = [q, mask, write], [], []
    end = b.op("Shape", mask, attrs={"start": 3, "end": 4}, dtype=np.int64)
    for name in ("k", "v"):
        past = gs.Variable(f"past_{name}", dtype=cache_dtype, shape=[1, KV_HEADS, MAX, DIM])
        new = gs.Variable(f"new_{name}", dtype=cache_dtype, shape=[1, KV_HEADS, 1, DIM])
        present = b.op("TensorScatter", past, new, write, attrs={"axis": 2, "mode": "linear"}, dtype=cache_dtype)
        present.name, present.shape = f"present_{name}", [1, KV_HEADS, MAX, DIM]
        read = b.op("Slice", present, gs.Constant(f"start_{name}", np.array([0], np.int64)), end,
                    gs.Constant(f"axis_{name}", np.array([2], np.int64)), dtype=cache_dtype)
        if cache_dtype != np.float32:
            read = b.op("Cast", read, attrs={"to": 1}, dtype=np.float32)
        inputs += [past, new]
        outputs.append(present)
        kv.append(read)
    y = b.op("Attention", q, *kv, mask, attrs={"q_num_heads": HEADS, "kv_num_heads": KV_HEADS}, dtype=np.float32)
    return b.model(inputs, [y, *outputs], opset=24)


def _feeds(length, cache_dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    feeds = {"q": rng.standard_normal((1, HEADS, 1, DIM)).astype(np.float32),
             "mask": np.ones((1, 1, 1, length), bool), "write": np.array([min(length, MAX) - 1], np.int64)}
    for name in ("k", "v"):
        feeds[f"past_{name}"] = rng.standard_normal((1, KV_HEADS, MAX, DIM)).astype(cache_dtype)
        feeds[f"new_{name}"] = rng.standard_normal((1, KV_HEADS, 1, DIM)).astype(cache_dtype)
    return feeds


@pytest.mark.parametrize("cache_dtype", [np.float32, np.float16])
def test_whole_cache_read_in_place_and_prefix_read_both_stay_exact(cache_dtype):
    model = _static_attention(cache_dtype)
    fused, report = apply(model, read_cache_in_place, prepare=False)
    assert ops(fused) == {"Shape": 1, "TensorScatter": 2, "Equal": 1, "Squeeze": 1, "If": 1}
    assert len(report.matched) == 1 and not report.declined
    branches = {a.name: a.g for n in fused.graph.node if n.op_type == "If" for a in n.attribute}
    whole = [n.op_type for n in branches["then_branch"].node]
    assert "Slice" not in whole and whole[-1] == "Attention"  # the cache itself, no copy of it
    assert whole == (["Attention"] if cache_dtype == np.float32 else ["Cast", "Cast", "Attention"])
    assert sorted(n.op_type for n in branches["else_branch"].node).count("Slice") == 2
    for length in (5, MAX):  # a prefix (else branch) and the whole cache (then branch)
        assert_same(model, fused, _feeds(length, cache_dtype), atol=1e-6)


def test_attention_not_reading_a_static_cache_is_declined_with_a_reason():
    #  past_k ── TensorScatter ── present_k ──┐   (no Slice: K is the whole cache already)
    b = Builder()
    q = gs.Variable("q", dtype=np.float32, shape=[1, HEADS, 1, DIM])
    write = gs.Variable("write", dtype=np.int64, shape=[1])
    past = gs.Variable("past", dtype=np.float32, shape=[1, KV_HEADS, MAX, DIM])
    new = gs.Variable("new", dtype=np.float32, shape=[1, KV_HEADS, 1, DIM])
    present = b.op("TensorScatter", past, new, write, attrs={"axis": 2, "mode": "linear"}, dtype=np.float32)
    y = b.op("Attention", q, present, present, attrs={"q_num_heads": HEADS, "kv_num_heads": KV_HEADS})
    model = b.model([q, write, past, new], [y, present], opset=24)
    fused, report = apply(model, read_cache_in_place, prepare=False)
    assert ops(fused) == ops(model)
    assert not report.matched and "Slice" in report.declined[0]["reason"]


def test_kv_length_reads_the_whole_cache_past_half_of_an_fp32_one_and_70_percent_of_an_fp16_one():
    from trtcompile.runtime.static_cache import KV_STEP, kv_length

    assert kv_length(1, 2112) == KV_STEP and kv_length(17, 2112) == KV_STEP
    assert kv_length(1025, 2112) == 1056  # a prefix up to half the cache
    assert kv_length(1057, 2112) == kv_length(2049, 2112) == 2112  # then the whole cache, read in place
    # FP16: its prefix is cast either way, so the prefix read stays cheaper up to 70% of the cache.
    assert kv_length(1057, 2112, itemsize=2) == 1088 and kv_length(1478, 2112, itemsize=2) == 1504
    assert kv_length(1479, 2112, itemsize=2) == kv_length(2049, 2112, itemsize=2) == 2112


@pytest.mark.parametrize("cache_dtype", [np.float32, np.float16])
def test_tensorrt_graph_is_the_prefix_read_without_the_if(cache_dtype):
    import onnx

    from trtcompile.passes.read_cache_in_place import inline_prefix_reads

    model = _static_attention(cache_dtype)
    fused, _ = apply(model, read_cache_in_place, prepare=False)
    for_tensorrt = onnx.ModelProto()
    for_tensorrt.CopyFrom(fused)
    assert inline_prefix_reads(for_tensorrt) == 1
    onnx.checker.check_model(for_tensorrt, full_check=True)
    assert ops(for_tensorrt) == ops(model)  # the graph before the pass: Slices, [Casts], one Attention
    assert not any(t.name.startswith("kv_read_whole_cache") for t in for_tensorrt.graph.initializer)
    for length in (5, MAX):  # the If's else branch, then its then branch, against the prefix read alone
        assert_same(fused, for_tensorrt, _feeds(length, cache_dtype), atol=1e-6)
    assert inline_prefix_reads(for_tensorrt) == 0  # nothing left to inline
