"""The KV-cache wrapper: names, shapes, generation metadata, and one graph for prefill and decode."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from decoder_packages import compiled_decoder, hf_model
from helpers import assert_close, ort_run
from trtcompile.export.kv_cache import causal_lm_io, default_profile
from trtcompile.profiles import parse_profile


@pytest.fixture(scope="module")
def llama_package(tmp_path_factory):
    return compiled_decoder("llama", tmp_path_factory.mktemp("decoders"))


def test_causal_lm_io_describes_the_gqa_cache():
    model = hf_model("llama")  # 4 query heads share 2 KV heads, head_dim 16
    io = causal_lm_io(model, model.config.to_dict())
    assert io.input_names == ["input_ids", "attention_mask", "position_ids", "past_key_values.0.key",
                              "past_key_values.0.value", "past_key_values.1.key", "past_key_values.1.value"]
    assert io.output_names == ["logits", "present.0.key", "present.0.value", "present.1.key", "present.1.value"]
    assert io.shapes["past_key_values.1.value"] == ["batch", 2, "past_sequence", 16]
    assert io.shapes["present.0.key"] == ["batch", 2, "past_sequence+sequence", 16]
    assert io.shapes["attention_mask"] == ["batch", "past_sequence+sequence"]
    assert io.example_inputs["past_key_values.0.key"].shape[2] > 0  # export must see past as dynamic
    gen = io.manifest_extra["generation"]
    assert (gen["num_layers"], gen["num_kv_heads"], gen["head_dim"]) == (2, 2, 16)
    assert (gen["bos_token_id"], gen["eos_token_id"], gen["pad_token_id"]) == (1, [2], 0)
    assert gen["tokenizer_dir"] == "tokenizer"

    # Keyword call (dotted names) and positional call agree, and present = concat(past, new).
    ex = io.example_inputs
    by_name = io.module(**ex)
    by_position = io.module(*[ex[n] for n in io.input_names])
    for a, b in zip(by_name, by_position):
        torch.testing.assert_close(a, b)
    past = ex["past_key_values.0.key"]
    torch.testing.assert_close(by_name[1][:, :, : past.shape[2]], past)


def test_default_profile_has_prefill_and_decode_buckets():
    profile = parse_profile(default_profile({"max_position_embeddings": 32768}))
    buckets = {b.name: b.dims for b in profile.buckets}
    assert buckets["prefill"]["past_sequence"] == (0, 0, 0)
    assert buckets["prefill"]["sequence"][2] == 512
    assert buckets["decode"]["sequence"] == (1, 1, 1)
    assert buckets["decode"]["past_sequence"][2] == 2047  # capped at 2048 positions in all
    small = {b.name: b.dims for b in parse_profile(default_profile({"n_positions": 256})).buckets}
    assert small["decode"]["past_sequence"] == (1, 255, 255)
    assert small["prefill"]["sequence"] == (1, 64, 256)


def test_attention_follows_tensorrt_rules(llama_package):
    """Past and new K/V are concatenated outside Attention; causality comes from an explicit mask."""
    model = onnx.load(str(llama_package / "model.onnx"))
    attention = [n for n in model.graph.node if n.op_type == "Attention"]
    assert len(attention) == 2
    for node in attention:
        assert len(node.input) == 4 and node.input[3], "expected Q, K, V and a mask, no past_key/past_value"
        assert len(node.output) == 1
        attrs = {a.name: a.i for a in node.attribute}
        assert attrs.get("is_causal", 0) == 0
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["attention_mask"] == ["batch", "past_sequence+sequence"]
    assert dims["past_key_values.0.key"] == ["batch", 2, "past_sequence", 16]


def test_one_graph_serves_prefill_and_decode(llama_package):
    """Prefill (past length 0) then two decode steps in ONNX Runtime match the PyTorch model."""
    torch_model = hf_model("llama")
    graph = onnx.load(str(llama_package / "model.onnx"))
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
        assert_close(out["logits"], ref.logits.numpy(), 1e-4, f"logits at step {step}")
        assert out["present.1.value"].shape[2] == mask.shape[1]
        past = {f"past_key_values.{i}.{kv}": out[f"present.{i}.{kv}"] for i in range(2) for kv in ("key", "value")}
        ids = out["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
        mask = np.concatenate([mask, np.ones((2, 1), np.int64)], axis=1)
        positions = positions[:, -1:] + 1
