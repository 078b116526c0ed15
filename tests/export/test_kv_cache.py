"""The KV-cache wrappers: names, shapes, generation metadata, TensorRT's rules, and numerics.

Static (default): TensorScatter into a fixed-size cache, last-position logits.
Concat (--kv-cache concat): present = concat(past, new).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from decoder_packages import compiled_decoder, hf_model
from helpers import assert_close, ort_run
from trtcompile.export.kv_cache import causal_lm_io, default_profile
from trtcompile.profiles import parse_profile

MAX_CACHE = 256  # the tiny models' max_position_embeddings


@pytest.fixture(scope="module")
def llama_package(tmp_path_factory):
    return compiled_decoder("llama", tmp_path_factory.mktemp("decoders"))


@pytest.fixture(scope="module")
def llama_concat_package(tmp_path_factory):
    return compiled_decoder("llama", tmp_path_factory.mktemp("decoders"), kv_cache="concat")


def test_static_io_describes_the_gqa_cache():
    model = hf_model("llama")  # 4 query heads share 2 KV heads, head_dim 16
    io = causal_lm_io(model, model.config.to_dict())
    assert io.input_names == ["input_ids", "attention_mask", "position_ids", "cache_position",
                              "past_key_values.0.key", "past_key_values.0.value", "past_key_values.1.key",
                              "past_key_values.1.value"]
    assert io.output_names == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    assert io.shapes["past_key_values.1.value"] == ["batch", 2, MAX_CACHE, 16]
    assert io.shapes["present.0.key"] == ["batch", 2, MAX_CACHE, 16]
    assert io.shapes["attention_mask"] == ["batch", "kv_sequence"]
    assert io.shapes["cache_position"] == ["batch"]
    assert io.shapes["logits"] == ["batch", 1, 128]  # last position only
    assert io.min_opset == 24
    gen = io.manifest_extra["generation"]
    assert (gen["num_layers"], gen["num_kv_heads"], gen["head_dim"]) == (2, 2, 16)
    assert (gen["kv_cache"], gen["max_cache"], gen["cache_position"], gen["kv_cache_dtype"]) == \
        ("static", MAX_CACHE, "cache_position", "float32")
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, [2], 0)

    # The eager wrapper writes the new K/V at each row's own position and leaves the rest alone.
    ex = io.example_inputs
    out = io.module(**ex)
    write = int(ex["cache_position"][0])
    past, present = ex["past_key_values.0.key"], out[1]
    torch.testing.assert_close(present[:, :, :write], past[:, :, :write])
    torch.testing.assert_close(present[:, :, write + 3:], past[:, :, write + 3:])
    assert not torch.equal(present[:, :, write:write + 3], past[:, :, write:write + 3])
    by_position = io.module(*[ex[n] for n in io.input_names])
    for a, b in zip(out, by_position):
        torch.testing.assert_close(a, b)


def test_concat_io_keeps_todays_form():
    model = hf_model("llama")
    io = causal_lm_io(model, model.config.to_dict(), kv_cache="concat")
    assert io.input_names == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
                              "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"]
    assert io.shapes["past_key_values.1.value"] == ["batch", 2, "past_sequence", 16]
    assert io.shapes["present.0.key"] == ["batch", 2, "past_sequence+sequence", 16]
    assert io.manifest_extra["generation"]["kv_cache"] == "concat"
    ex = io.example_inputs
    by_name = io.module(**ex)
    past = ex["past_key_values.0.key"]
    torch.testing.assert_close(by_name[1][:, :, : past.shape[2]], past)
    assert by_name[0].shape[1] == 1  # last-position logits here too


def test_bad_kv_options_name_the_value():
    from trtcompile.errors import UserError

    model = hf_model("llama")
    with pytest.raises(UserError, match="--kv-cache 'ring' is not one of static, concat"):
        causal_lm_io(model, model.config.to_dict(), kv_cache="ring")
    with pytest.raises(UserError, match="--kv-cache-dtype 'int8' is not one of"):
        causal_lm_io(model, model.config.to_dict(), kv_cache_dtype="int8")
    with pytest.raises(UserError, match="--kv-cache-dtype bf16 cannot be verified here"):
        causal_lm_io(model, model.config.to_dict(), kv_cache_dtype="bf16")
    with pytest.raises(UserError, match="--kv-cache-dtype fp16 needs --kv-cache static"):
        causal_lm_io(model, model.config.to_dict(), kv_cache="concat", kv_cache_dtype="fp16")


def test_default_profiles():
    profile = parse_profile(default_profile({"max_position_embeddings": 32768}, "concat"))
    buckets = {b.name: b.dims for b in profile.buckets}
    assert buckets["prefill"]["past_sequence"] == (0, 0, 0)
    assert buckets["decode"]["past_sequence"][2] == 2047  # capped at 2048 positions in all
    static = {b.name: b.dims for b in parse_profile(default_profile({"max_position_embeddings": 32768},
                                                                    "static")).buckets}
    assert static["prefill"]["sequence"] == (1, 64, 512)
    assert static["prefill"]["kv_sequence"] == (1, 512, 2048)  # chunks land anywhere in the cache
    assert static["decode"]["sequence"] == (1, 1, 1)
    assert static["decode"]["batch"][2] == 8  # the runtime's slots
    small = {b.name: b.dims for b in parse_profile(default_profile({"n_positions": 256}, "static")).buckets}
    assert small["decode"]["kv_sequence"] == (1, 256, 256)


def test_static_graph_follows_tensorrt_rules(llama_package):
    """TensorScatter(axis=2, linear) outside Attention; each layer's Attention (Q, K, V and a mask, one
    output, no is_causal) in both branches of one If on kv_sequence == max_cache: the whole cache read
    in place (then), the Slice of the first kv_sequence slots (else); its query heads grouped per KV head."""
    model = onnx.load(str(llama_package / "model.onnx"))
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) >= 24
    scatters = [n for n in model.graph.node if n.op_type == "TensorScatter"]
    assert len(scatters) == 4
    for node in scatters:
        attrs = {a.name: a for a in node.attribute}
        assert attrs["axis"].i == 2 and attrs["mode"].s == b"linear"
        assert node.input[0].startswith("past_key_values.") and node.input[2] == "cache_position"
        assert node.output[0].startswith("present.")
    assert not [n for n in model.graph.node if n.op_type == "Attention"]
    reads = [n for n in model.graph.node if n.op_type == "If"]
    assert len(reads) == 2
    for node in reads:
        branches = {a.name: a.g for a in node.attribute}
        whole = [n for n in branches["then_branch"].node if n.op_type == "Attention"]
        sliced = [n for n in branches["else_branch"].node if n.op_type == "Attention"]
        assert len(whole) == len(sliced) == 1
        assert [n.op_type for n in branches["then_branch"].node] == ["Attention"]  # no copy of the cache
        assert whole[0].input[1].startswith("present.") and whole[0].input[2].startswith("present.")
        assert sorted(n.op_type for n in branches["else_branch"].node) == ["Attention", "Slice", "Slice"]
        for attention in (whole[0], sliced[0]):
            assert len(attention.input) == 4 and attention.input[3], "expected Q, K, V and a mask, no past_key/value"
            assert len(attention.output) == 1
            attrs = {a.name: a.i for a in attention.attribute}
            assert attrs.get("is_causal", 0) == 0
            # The 4 query heads folded into 2 query blocks, one per KV head (passes/group_query_heads.py).
            assert attrs["kv_num_heads"] == 2 and attrs["q_num_heads"] == 2
        assert whole[0].input[3] == sliced[0].input[3] and whole[0].input[0] == sliced[0].input[0]
        producers = {o: n for n in model.graph.node for o in n.output}
        assert producers[whole[0].input[0]].op_type == "Reshape"  # Q [B, 4, S, 16] -> [B, 2, 2*S, 16]
        assert producers[whole[0].input[3]].op_type == "Tile"  # the mask's rows, once per folded head
        assert [n.op_type for n in model.graph.node if node.output[0] in n.input] == ["Reshape"]
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["past_key_values.0.key"] == ["batch", 2, MAX_CACHE, 16]
    assert dims["attention_mask"] == ["batch", "kv_sequence"]


def _static_feeds(ids, positions, write, kv_len, caches):
    return {"input_ids": ids, "position_ids": positions, "cache_position": write,
            "attention_mask": np.ones((ids.shape[0], kv_len), np.int64), **caches}


def test_static_graph_prefill_chunks_and_decode_match_pytorch(llama_package):
    """Two rows of different lengths, a prompt written in two chunks, then decode steps with each row at
    its own position: last-position logits match HF's last column within 1e-4 at every step."""
    torch_model = hf_model("llama")
    graph = onnx.load(str(llama_package / "model.onnx"))
    prompts = [np.array([5, 17, 33, 9, 8, 7, 6], np.int64), np.array([9, 8, 3], np.int64)]
    caches = {f"past_key_values.{i}.{kv}": np.zeros((2, 2, MAX_CACHE, 16), np.float32)
              for i in range(2) for kv in ("key", "value")}
    history = [list(p) for p in prompts]

    def reference_last_logits(row):
        with torch.inference_mode():
            return torch_model(input_ids=torch.tensor([history[row]])).logits[0, -1].numpy()

    # Prefill each row into its own cache row (batch 1 on a one-row view), row 0 in two chunks.
    for row, chunks in ((0, [(0, 4), (4, 7)]), (1, [(0, 3)])):
        row_caches = {k: v[row:row + 1] for k, v in caches.items()}
        for start, end in chunks:
            ids = prompts[row][None, start:end]
            out = ort_run(graph, _static_feeds(ids, np.arange(start, end)[None], np.array([start]), 32, row_caches))
            row_caches = {k.replace("present", "past_key_values"): v for k, v in out.items() if k != "logits"}
        for k, v in row_caches.items():
            caches[k][row] = v[0]
        assert out["logits"].shape == (1, 1, 128)
        assert_close(out["logits"][0, 0], reference_last_logits(row), 1e-4, f"prefill logits, row {row}")
        history[row].append(int(out["logits"][0, 0].argmax()))
    # Decode both rows together, each at its own write position.
    for step in range(3):
        lengths = np.array([len(h) - 1 for h in history], np.int64)
        ids = np.array([[h[-1]] for h in history], np.int64)
        out = ort_run(graph, _static_feeds(ids, lengths[:, None], lengths, 32, caches))
        caches = {k.replace("present", "past_key_values"): v for k, v in out.items() if k != "logits"}
        for row in range(2):
            assert_close(out["logits"][row, 0], reference_last_logits(row), 1e-4, f"decode {step} row {row}")
            history[row].append(int(out["logits"][row, 0].argmax()))
    # The same step reading the whole cache in place (kv_sequence == max_cache: the If's other branch).
    lengths = np.array([len(h) - 1 for h in history], np.int64)
    ids = np.array([[h[-1]] for h in history], np.int64)
    prefix = ort_run(graph, _static_feeds(ids, lengths[:, None], lengths, 32, caches))["logits"]
    whole = ort_run(graph, _static_feeds(ids, lengths[:, None], lengths, MAX_CACHE, caches))["logits"]
    for row in range(2):
        assert_close(whole[row, 0], reference_last_logits(row), 1e-4, f"whole-cache read, row {row}")
    assert_close(whole, prefix, 1e-5, "whole-cache read vs prefix read")


def test_decode_profile_shows_which_cache_read_ran(llama_package):
    """`trtcompile bench decode`'s profiler cells: a short context runs the If's sliced branch, the
    whole cache (kv_len == max_cache) the branch whose Attention reads the cache in place."""
    from trtcompile.bench.decode import profile_cells

    short, whole = profile_cells([(llama_package, 20, None), (llama_package, 200, MAX_CACHE)], rows=2, steps=2,
                                 threads=1)
    assert short["kv_len"] == 32 and whole["kv_len"] == MAX_CACHE
    attention = {name: sorted(n for n in cell["nodes"] if n.startswith("Attention:"))
                 for name, cell in (("short", short), ("whole", whole))}
    assert attention["whole"] and all(n.endswith("_whole") for n in attention["whole"])
    assert attention["short"] and not any(n.endswith("_whole") for n in attention["short"])
    assert {"Attention", "TensorScatter", "MatMul"} <= set(whole["ops"])


def test_decode_bench_averages_sessions_created_in_turn(llama_package):
    """`bench decode --instances 2 --no-profile`: two sessions per cell, each timed, the cell's figure
    their mean; without the profiler there are step times but no per-op table."""
    from trtcompile.bench.decode import profile_cells

    short, longer = profile_cells([(llama_package, 20, None), (llama_package, 40, None)], rows=1, steps=2,
                                  threads=1, instances=2, profile=False, spinning=False)
    for cell in (short, longer):
        walls = [r["wall_ms"] for r in cell["instances"]]
        assert len(walls) == 2 and all(w > 0 for w in walls)
        assert cell["wall_ms"] == pytest.approx(sum(walls) / 2)
        assert cell["ops"] == {} and np.isnan(cell["run_ms"])
    assert (short["kv_len"], longer["kv_len"]) == (32, 64)
    profiled, = profile_cells([(llama_package, 20, None)], rows=1, steps=2, threads=1, instances=2)
    assert profiled["kernels"] > 0 and {"MatMul", "TensorScatter"} <= set(profiled["ops"])
    # --huge-pages off: the same cell with the weights left on 4 KiB pages (the same kernels)
    paged, plain = profile_cells([(llama_package, 20, None, True), (llama_package, 20, None, False)], rows=1,
                                 steps=2, threads=1)
    assert paged["kernels"] == plain["kernels"] == profiled["kernels"]


def test_last_position_logits_equal_the_full_graphs_last_column(llama_package, tmp_path_factory):
    full = compiled_decoder("llama", tmp_path_factory.mktemp("decoders"), all_logits=True)
    ids = np.array([[5, 17, 33, 9, 8]], np.int64)
    caches = {f"past_key_values.{i}.{kv}": np.zeros((1, 2, MAX_CACHE, 16), np.float32)
              for i in range(2) for kv in ("key", "value")}
    feeds = _static_feeds(ids, np.arange(5)[None], np.array([0]), 5, caches)
    last = ort_run(onnx.load(str(llama_package / "model.onnx")), feeds)["logits"]
    every = ort_run(onnx.load(str(full / "model.onnx")), feeds)["logits"]
    assert every.shape == (1, 5, 128) and last.shape == (1, 1, 128)
    assert_close(last[:, 0], every[:, -1], 1e-4, "last column")
    with torch.inference_mode():
        hf = hf_model("llama")(input_ids=torch.from_numpy(ids)).logits.numpy()
    assert_close(every, hf, 1e-4, "every position vs HF")


def test_concat_graph_serves_prefill_and_decode(llama_concat_package):
    """Prefill (past length 0) then two decode steps in ONNX Runtime match the PyTorch model."""
    torch_model = hf_model("llama")
    graph = onnx.load(str(llama_concat_package / "model.onnx"))
    attention = [n for n in graph.graph.node if n.op_type == "Attention"]
    assert len(attention) == 2 and all(len(n.input) == 4 and len(n.output) == 1 for n in attention)
    ids = np.array([[0, 0, 5, 17, 33], [9, 8, 7, 6, 5]], np.int64)  # row 0 left-padded
    mask = (np.arange(5)[None] >= np.array([[2], [0]])).astype(np.int64)
    positions = np.where(mask == 1, np.cumsum(mask, 1) - 1, 0)
    past = {f"past_key_values.{i}.{kv}": np.zeros((2, 2, 0, 16), np.float32) for i in range(2) for kv in ("key", "value")}
    cache = None
    for step in range(3):
        out = ort_run(graph, {"input_ids": ids, "attention_mask": mask, "position_ids": positions, **past})
        with torch.inference_mode():
            ref = torch_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                              position_ids=torch.from_numpy(positions), past_key_values=cache, use_cache=True)
        cache = ref.past_key_values
        assert_close(out["logits"][:, -1], ref.logits[:, -1].numpy(), 1e-4, f"logits at step {step}")
        assert out["present.1.value"].shape[2] == mask.shape[1]
        past = {f"past_key_values.{i}.{kv}": out[f"present.{i}.{kv}"] for i in range(2) for kv in ("key", "value")}
        ids = out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
