"""The whole PIPELINE on real exports of every tiny family: every attention layer fused, every norm
fused, and the optimized graph still matches PyTorch at two shapes (batch > 1, padding included).

Exports are shared through the session cache in conftest.py (`tiny_export`). Exporting is the
slow part, so each family runs two of {opset 18, 23} x {eager, sdpa}, covering both opsets and both
attention implementations per family; BERT and GPT-2 also go through the legacy exporter. (All 32
dynamo combinations passed when this was written; add a case here to widen it.)
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from pass_fixtures import tiny_feeds
from helpers import assert_close, ort_run
from trtcompile.onnx_io import op_histogram, to_model
from trtcompile.passes import ModelInfo, PassContext, run_pipeline
from trtcompile.settings import OptimizeSettings

ROPE = ("llama", "mistral", "qwen2")
# Each family runs at both opsets and with both attention implementations, crossed so that the
# torch SDPA decomposition (18 + sdpa) and the exporter's own Attention (23 + sdpa, GQA rewrite)
# are each seen on encoders and on decoders.
FAMILIES = ("bert", "roberta", "distilbert", "vit", "gpt2", "llama", "mistral", "qwen2")
# Every family at both opsets with both attention implementations: 32 exports, ~2 min on 2 cores.
CASES = [(f, "dynamo", opset, attn) for f in FAMILIES for opset in (18, 23) for attn in ("eager", "sdpa")]
CASES += [("bert", "legacy", 17, "eager"), ("gpt2", "legacy", 20, "eager"), ("llama", "legacy", 20, "eager")]
SHAPES = [(3, 7), (2, 12)]


def _torch_reference(model, family: str, feeds: dict) -> np.ndarray:
    import torch

    with torch.no_grad():
        if family == "vit":
            return model(pixel_values=torch.from_numpy(feeds["pixel_values"])).last_hidden_state.numpy()
        kwargs = {"use_cache": False} if family in ("gpt2", *ROPE) else {}
        out = model(input_ids=torch.from_numpy(feeds["input_ids"]),
                    attention_mask=torch.from_numpy(feeds["attention_mask"]), **kwargs)
        return (out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state).numpy()


@pytest.mark.parametrize("family,exporter,opset,attn", CASES, ids=lambda v: str(v))
def test_family_fully_fused_and_matches_pytorch(tiny_export, family, exporter, opset, attn):
    from tiny_models import build

    raw = tiny_export(family, exporter=exporter, opset=opset, attn=attn)
    model = build(family, attn)
    info = ModelInfo.from_config(model.config.to_dict())
    ctx = PassContext(settings=OptimizeSettings(check_each_pass=True), model=info)
    graph, reports = run_pipeline(gs.import_onnx(raw), ctx)
    fused = to_model(graph)
    counts = op_histogram(fused)

    attention = next(r for r in reports if r.name == "fuse_attention")
    assert counts.get("Attention", 0) == info.num_layers, (counts, attention.declined)
    assert "Softmax" not in counts, attention.declined
    assert not [w for w in ctx.warnings if "fuse_attention" in w], ctx.warnings
    assert fused.opset_import[0].version >= 23
    for d in attention.matched:  # head counts static and GQA/MQA native (K/V not expanded)
        assert (d.get("q_num_heads"), d.get("kv_num_heads")) == (info.num_heads, info.num_kv_heads), d
    if family in ("llama", "mistral") and exporter == "dynamo":  # Q/K/V joined (no biases): heads split once
        heads = next(r for r in reports if r.name == "split_heads_once")
        assert len(heads.matched) == info.num_layers, heads.declined
    norm_op = "RMSNormalization" if family in ROPE else "LayerNormalization"
    assert counts.get(norm_op, 0) == 2 * info.num_layers + 1, counts

    for batch, seq in SHAPES:
        feeds = tiny_feeds(family, batch=batch, seq=seq)
        got = ort_run(fused, feeds)["out"]
        want = _torch_reference(model, family, feeds)
        what = f"{family} {exporter}{opset} {attn} batch {batch} seq {seq}"
        print(f"{what}: max abs {assert_close(got, want, 1e-4, what):.2e}")


@pytest.fixture(scope="module")
def kv_cache_export(checkpoint):
    """The KV-cache wrapper's export of tiny Llama (GQA): past K/V concatenated outside Attention."""
    pytest.importorskip("trtcompile.export.kv_cache")
    from trtcompile.export.source import load_source
    from trtcompile.export.torch_export import export_module
    from trtcompile.onnx_io import fix_ir_version
    from trtcompile.settings import ExportSettings

    settings = ExportSettings(opset=23, kv_cache="concat")  # the static form is tested in tests/export
    source = load_source(checkpoint("llama", "sdpa"), settings)
    return source, fix_ir_version(export_module(source, source.known_shapes, settings))


def test_kv_cache_decoder_keeps_native_gqa_and_matches(kv_cache_export):
    source, raw = kv_cache_export
    info = ModelInfo.from_config(source.config)
    ctx = PassContext(settings=OptimizeSettings(check_each_pass=True), model=info)
    graph, reports = run_pipeline(gs.import_onnx(raw), ctx)
    fused = to_model(graph)
    attention = next(r for r in reports if r.name == "fuse_attention")
    assert op_histogram(fused).get("Attention") == info.num_layers and not ctx.warnings
    for d in attention.matched:
        assert d["gqa_unexpanded"] and (d["q_num_heads"], d["kv_num_heads"]) == (info.num_heads, info.num_kv_heads)
    for node in fused.graph.node:
        if node.op_type == "Attention":  # what TensorRT's parser takes: no past inputs, one output, no is_causal
            assert len(node.input) == 4 and len([o for o in node.output if o]) == 1
            assert not any(a.name == "is_causal" and a.i for a in node.attribute)

    gen = source.manifest_extra["generation"]
    rng = np.random.default_rng(0)
    for batch, past, seq in ((2, 0, 5), (3, 4, 1), (2, 6, 3)):  # prefill, decode, chunked prefill
        mask = np.ones((batch, past + seq), np.int64)
        if past == 0:
            mask[0, :2] = 0  # left padding, as batched generate pads
        positions = np.clip(np.cumsum(mask, -1) - 1, 0, None)[:, past:].astype(np.int64)
        feeds = {"input_ids": rng.integers(0, 128, (batch, seq)), "attention_mask": mask, "position_ids": positions}
        for name in gen["past_inputs"]:
            feeds[name] = rng.standard_normal((batch, gen["num_kv_heads"], past, gen["head_dim"])).astype(np.float32)
        want, got = source.reference(feeds), ort_run(fused, feeds)
        # Compare real positions only: a padding query attends to nothing, where Attention gives 0
        # and MatMul/Softmax the mean of V (documented in fuse_attention); nothing reads those rows.
        real = mask.astype(bool)
        for name in want:
            keep = real[:, -1:] if name == "logits" else real  # last-position logits
            a, b = (np.moveaxis(x, 2, 1) if name != "logits" else x for x in (got[name], want[name]))
            err = assert_close(a[keep], b[keep], 1e-4, name)
            print(f"kv-cache llama batch {batch} past {past} seq {seq} {name}: max abs {err:.2e}")
