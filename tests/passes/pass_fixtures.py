"""Helpers shared by the pass tests (imported by name: a `from conftest import` would find whichever
conftest.py was imported first, e.g. tests/serve's)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

DECODERS = ("gpt2", "llama", "mistral", "qwen2")


class _Wrapped:
    """The HF model as a plain forward(input_ids, attention_mask) -> one tensor."""

    @staticmethod
    def make(family: str, attn: str):
        import torch

        from tiny_models import build

        model = build(family, attn)

        class Wrapped(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, x, mask=None):
                if family == "vit":
                    return self.model(pixel_values=x).last_hidden_state
                kwargs = {"use_cache": False} if family in DECODERS else {}
                out = self.model(input_ids=x, attention_mask=mask, **kwargs)
                return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state

        return Wrapped().eval()


def export_tiny(family: str, path: Path, *, exporter: str = "dynamo", opset: int = 18, attn: str = "sdpa") -> Path:
    """Export a tiny family with dynamic batch and sequence (inputs input_ids/attention_mask or
    pixel_values, output `out`)."""
    import torch

    from tiny_models import VOCAB

    model = _Wrapped.make(family, attn)
    if family == "vit":
        args, names = (torch.randn(2, 3, 32, 32),), ["pixel_values"]
        axes = {"pixel_values": {0: "B"}, "out": {0: "B"}}
    else:
        args = (torch.randint(0, VOCAB, (2, 8)), torch.ones(2, 8, dtype=torch.int64))
        names = ["input_ids", "attention_mask"]
        axes = {"input_ids": {0: "B", 1: "S"}, "attention_mask": {0: "B", 1: "S"}, "out": {0: "B", 1: "S"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch, seq = torch.export.Dim("B", min=1, max=64), torch.export.Dim("S", min=2, max=128)
            shapes = {"x": {0: batch}} if family == "vit" else {"x": {0: batch, 1: seq}, "mask": {0: batch, 1: seq}}
            torch.onnx.export(model, args, str(path), dynamo=True, opset_version=opset, input_names=names,
                              output_names=["out"], dynamic_shapes=shapes, external_data=False, verbose=False)
        else:
            torch.onnx.export(model, args, str(path), dynamo=False, opset_version=opset, input_names=names,
                              output_names=["out"], dynamic_axes=axes)
    return path


def tiny_feeds(family: str, batch: int = 3, seq: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for an export above; the first row is padded so masks matter."""
    from tiny_models import VOCAB

    rng = np.random.default_rng(seed)
    if family == "vit":
        return {"pixel_values": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq - 2:] = 0
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq)), "attention_mask": mask}
