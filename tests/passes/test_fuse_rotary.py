import itertools

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from pass_fixtures import _Wrapped, tiny_feeds
from fusion_helpers import Builder, apply, assert_same, const, ops
from helpers import assert_close, ort_run
from trtcompile.passes.fuse_rotary import fuse_rotary

N, S, H = 2, 5, 8
_names = itertools.count()


def _i64(*values):
    return const(f"i64_{next(_names)}", np.array(values, np.int64))


def _angles():
    inv_freq = 1.0 / (10000 ** (np.arange(0, H, 2) / H))
    return np.outer(np.arange(S), inv_freq).astype(np.float32)          # [S, H/2]


def _x():
    return gs.Variable("x", dtype=np.float32, shape=["B", N, S, H])


def _feeds(batch=3):
    return {"x": np.random.default_rng(0).standard_normal((batch, N, S, H)).astype(np.float32)}


def _half_rotation(b: Builder, x, cos, sin):
    #  x ─┬─ Slice[:h/2] ─────────────┐
    #     ├─ Slice[h/2:] ── Neg ── Concat(-1) ── Mul(sin) ─┐
    #     └─ Mul(cos) ──────────────────────────────────── Add ── y
    i64 = _i64
    x1 = b.op("Slice", x, i64(0), i64(H // 2), i64(-1))
    x2 = b.op("Slice", x, i64(H // 2), i64(2**62), i64(-1))
    rot = b.op("Concat", b.op("Neg", x2), x1, attrs={"axis": -1})
    return b.op("Add", b.op("Mul", x, const("cos", cos)), b.op("Mul", rot, const("sin", sin)))


def test_half_rotation_with_constant_caches():
    # HF caches: cat(freqs, freqs) on the last axis, broadcast over batch and heads: [1, 1, S, H].
    ang = np.concatenate([_angles()] * 2, axis=-1)[None, None]
    b, x = Builder(), _x()
    model = b.model([x], [_half_rotation(b, x, np.cos(ang), np.sin(ang))])
    fused, report = apply(model, fuse_rotary, prepare=False)
    rope = [n for n in fused.graph.node if n.op_type == "RotaryEmbedding"]
    assert len(rope) == 1 and not {"Neg", "Slice"} & set(ops(fused))
    assert {a.name: a.i for a in rope[0].attribute} == {"interleaved": 0}
    assert fused.opset_import[0].version == 23
    assert report.matched[0]["mode"] == "half"
    for batch in (1, 3):
        assert_same(model, fused, _feeds(batch))


def test_interleaved_with_constant_caches():
    #  x ─┬─ Slice[0::2] ── Unsqueeze(-1) ──────────┐
    #     ├─ Slice[1::2] ── Neg ── Unsqueeze(-1) ── Concat(-1) ── Reshape(x) ── Mul(sin) ─┐
    #     └─ Mul(cos) ───────────────────────────────────────────────────────────────── Add ── y
    ang = np.repeat(_angles(), 2, axis=-1)[None, None]
    b, x = Builder(), _x()
    i64 = _i64
    x1 = b.op("Slice", x, i64(0), i64(H), i64(-1), i64(2))
    x2 = b.op("Slice", x, i64(1), i64(H), i64(-1), i64(2))
    stacked = b.op("Concat", b.op("Unsqueeze", b.op("Neg", x2), i64(-1)), b.op("Unsqueeze", x1, i64(-1)),
                   attrs={"axis": -1})
    rot = b.op("Reshape", stacked, i64(0, 0, 0, H))
    y = b.op("Add", b.op("Mul", x, const("cos", np.cos(ang))), b.op("Mul", rot, const("sin", np.sin(ang))))
    model = b.model([x], [y])
    fused, report = apply(model, fuse_rotary, prepare=False)
    rope = [n for n in fused.graph.node if n.op_type == "RotaryEmbedding"]
    assert len(rope) == 1 and {a.name: a.i for a in rope[0].attribute} == {"interleaved": 1}
    assert_same(model, fused, _feeds())


def test_declines_cache_whose_halves_differ():
    # cos/sin not duplicated across the halves: RotaryEmbedding cannot express it; leave it.
    ang = np.random.default_rng(2).standard_normal((1, 1, S, H)).astype(np.float32)
    b, x = Builder(), _x()
    model = b.model([x], [_half_rotation(b, x, np.cos(ang), np.sin(ang))])
    fused, report = apply(model, fuse_rotary, prepare=False)
    assert ops(fused) == ops(model) and fused.opset_import[0].version == 18
    assert "not provable" in report.declined[0]["reason"]
    assert_same(model, fused, _feeds())


@pytest.mark.parametrize("family,exporter,opset", [
    ("llama", "dynamo", 18), ("mistral", "legacy", 17), ("qwen2", "legacy", 20),
])
def test_real_exports_fuse_every_q_and_k(tiny_export, family, exporter, opset):
    model = tiny_export(family, exporter, opset)
    fused, report = apply(model, fuse_rotary)
    assert ops(fused).get("RotaryEmbedding") == 4 and not report.declined   # 2 layers x (q, k)
    assert "Neg" not in ops(fused)
    for batch, seq in ((1, 5), (3, 7)):
        assert_same(model, fused, tiny_feeds(family, batch, seq))


def test_repairs_dynamo_rotary_for_batch_above_one(tiny_export):
    # dynamo at 23 fuses RotaryEmbedding itself, with 3-D caches of batch 1 (positions from arange):
    # ONNX Runtime rejects batch > 1. After the pass: Expand to the input batch, same numbers as torch.
    import torch

    model = tiny_export("llama", "dynamo", 23)
    assert ops(model).get("RotaryEmbedding") == 4
    fused, report = apply(model, fuse_rotary)
    rope = [n for n in fused.graph.node if n.op_type == "RotaryEmbedding"]
    producers = {o: n.op_type for n in fused.graph.node for o in n.output}
    assert len(rope) == 4 and all(producers[n.input[1]] == "Expand" for n in rope)
    assert len(report.matched) == 4 and "repaired" in report.matched[0]
    reference = _Wrapped.make("llama", "sdpa")
    for batch, seq in ((1, 5), (3, 7)):
        feeds = tiny_feeds("llama", batch, seq)
        with torch.no_grad():
            expected = reference(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]))
        assert_close(ort_run(fused, feeds)["out"], expected.numpy(), 1e-4, f"batch {batch}")


def test_second_run_changes_nothing(tiny_export):
    model = tiny_export("llama", "dynamo", 23)
    once, _ = apply(model, fuse_rotary)
    twice, report = apply(once, fuse_rotary)
    assert ops(twice) == ops(once) and not report.matched and not report.declined


def test_heads_after_sequence_layout_is_transposed_around_the_op():
    # x is [B, S, N, H] and the cache broadcasts over axis 2 (GPT-J/NeoX-style code):
    # RotaryEmbedding wants [B, N, S, H], so the fusion transposes in and back out.
    ang = np.concatenate([_angles()] * 2, axis=-1)[None, :, None, :]          # [1, S, 1, H]
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=["B", S, N, H])
    model = b.model([x], [_half_rotation(b, x, np.cos(ang), np.sin(ang))])
    fused, report = apply(model, fuse_rotary, prepare=False)
    assert ops(fused).get("RotaryEmbedding") == 1 and ops(fused).get("Transpose") == 2
    assert report.matched[0]["layout"] == "bsnh"
    feeds = {"x": np.random.default_rng(0).standard_normal((3, S, N, H)).astype(np.float32)}
    assert_same(model, fused, feeds)


def test_gptj_interleaved_partial_rotary_real_export(tmp_path):
    # GPT-J: rotate_every_two on [B, S, N, H], rotary_dim < head size, cos/sin from
    # repeat_interleave: a family none of the fusions was written against.
    import warnings

    import onnx
    import torch
    import transformers as tf

    torch.manual_seed(0)
    model = tf.GPTJForCausalLM(tf.GPTJConfig(vocab_size=128, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                                             n_positions=256, bos_token_id=1, eos_token_id=2)).eval()

    class Wrapped(torch.nn.Module):
        def forward(self, ids, mask):
            return model(input_ids=ids, attention_mask=mask, use_cache=False).logits

    batch, seq = torch.export.Dim("B", min=1, max=16), torch.export.Dim("S", min=2, max=64)
    path = tmp_path / "gptj.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped(), (torch.randint(0, 128, (2, 8)), torch.ones(2, 8, dtype=torch.int64)), str(path),
                          dynamo=True, opset_version=18, input_names=["input_ids", "attention_mask"],
                          output_names=["out"], dynamic_shapes={"ids": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}},
                          external_data=False, verbose=False)
    raw = onnx.load(str(path))
    fused, report = apply(raw, fuse_rotary)
    assert ops(fused).get("RotaryEmbedding") == 4 and not report.declined
    assert all(m["mode"] == "interleaved" and m["layout"] == "bsnh" for m in report.matched)
    for b_, s_ in ((1, 5), (3, 7)):
        assert_same(raw, fused, tiny_feeds("gpt2", b_, s_))
