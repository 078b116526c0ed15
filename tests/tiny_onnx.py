"""Tiny families exported to ONNX (dynamo, opset 23) once per test session, for the precision tests.

Decoders are wrapped to return logits without a cache; encoders return the last hidden state.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

_CACHE: dict[str, onnx.ModelProto] = {}
_DIR = Path(tempfile.mkdtemp(prefix="trtcompile-tiny-onnx-"))
DECODERS = {"gpt2", "llama", "mistral", "qwen2"}


def export(family: str, attn: str = "sdpa") -> onnx.ModelProto:
    """The FP32 ONNX model of tests/tiny_models.build(family, attn); inputs input_ids, attention_mask.

    attn="sdpa" gives fused ONNX Attention at opset 23; "eager" gives MatMul/Softmax attention."""
    key = f"{family}-{attn}"
    if key not in _CACHE:
        import torch
        from tiny_models import build

        from trtcompile.onnx_io import fix_ir_version

        class Wrapper(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask):
                if family in DECODERS:
                    return self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
                return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        ids = torch.ones(2, 16, dtype=torch.long)
        dims = {0: "batch", 1: "sequence"}
        program = torch.onnx.export(Wrapper(build(family, attn)), (), kwargs={"input_ids": ids, "attention_mask": ids},
                                    dynamo=True, opset_version=23, external_data=False, verbose=False,
                                    dynamic_shapes={"input_ids": dims, "attention_mask": dims})
        model = fix_ir_version(program.model_proto)
        onnx.save(model, str(_DIR / f"{key}.onnx"))  # a copy to look at when a test fails
        _CACHE[key] = model
    out = onnx.ModelProto()
    out.CopyFrom(_CACHE[key])
    return out


def token_feeds(count: int, batch: int, sequence: int, seed: int, vocab: int = 128) -> list[dict[str, np.ndarray]]:
    """Random token batches with a padded tail in every other row."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(count):
        ids = rng.integers(0, vocab, (batch, sequence)).astype(np.int64)
        mask = np.ones((batch, sequence), np.int64)
        mask[1::2, sequence - sequence // 4:] = 0
        feeds.append({"input_ids": ids, "attention_mask": mask})
    return feeds
