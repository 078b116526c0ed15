"""INT4 and FP8 packages of tiny Llama and GPT-2 compile through the CLI path and generate through
the runtime (ONNX Runtime backend, which fuses INT4 into MatMulNBits).

Reference: the HF model's logits for the prompt (tiny_models.build, same seeded weights); the
package's prefill logits within cosine 0.97 (INT4 of random 2-layer weights; FP8 0.995), and the
first generated token is the HF argmax where HF's top-2 margin is clear.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import cosine

import trtcompile.runtime as rt
from trtcompile.compile import compile_package
from trtcompile.settings import CalibrationSettings, ExportSettings, OptimizeSettings

PROMPT = np.array([[5, 9, 17, 33, 2, 8, 60, 7]], np.int64)


def _calibration_npz(path, config, seed=0):
    """Prefill samples (empty past) for every input of the KV-cache graph."""
    rng = np.random.default_rng(seed)
    n, s = 12, 16
    data = {"input_ids": rng.integers(3, 128, (n, s)), "attention_mask": np.ones((n, s), np.int64),
            "position_ids": np.tile(np.arange(s), (n, 1))}
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = config.hidden_size // heads
    for i in range(config.num_hidden_layers):
        for kv in ("key", "value"):
            data[f"past_key_values.{i}.{kv}"] = np.zeros((n, kv_heads, 0, head_dim), np.float32)
    np.savez(path, **data)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("family,precision", [("llama", "int4"), ("gpt2", "int4"), ("gpt2", "fp8")])
def test_quantized_package_generates(family, precision, checkpoint, tmp_path):
    from decoder_packages import hf_model

    ckpt = checkpoint(family)
    npz = _calibration_npz(tmp_path / "cal.npz", hf_model(family).config)
    calibration = CalibrationSettings(data=npz, int4_block_size=32)
    # The concat-cache form: the calibration .npz above feeds its empty past (see the report for
    # static-cache calibration).
    compile_package(str(ckpt), tmp_path / precision, optimize=OptimizeSettings(precision=precision),
                    calibration=calibration, export=ExportSettings(kv_cache="concat"))
    with torch.no_grad():
        ref = hf_model(family)(torch.from_numpy(PROMPT)).logits.numpy()
    with rt.load(tmp_path / precision, backend="onnxruntime") as model:
        tokens = model.generate(PROMPT, max_new_tokens=6)
        assert tokens.shape == (1, PROMPT.shape[1] + 6)
        assert (tokens[:, :PROMPT.shape[1]] == PROMPT).all() and (tokens < 128).all()
        feeds = {"input_ids": PROMPT, "attention_mask": np.ones_like(PROMPT),
                 "position_ids": np.arange(PROMPT.shape[1])[None]}
        for spec in model.manifest.inputs:
            if spec.name not in feeds:
                feeds[spec.name] = np.zeros([1] + [0 if isinstance(d, str) else d for d in spec.shape[1:]], np.float32)
        logits = model.run(feeds)["logits"]
    assert cosine(logits[0, -1], ref[0, -1]) > (0.97 if precision == "int4" else 0.995)  # last position (all or last logits)
    top2 = np.sort(ref[0, -1])[-2:]
    if top2[1] - top2[0] > 0.05:
        assert tokens[0, PROMPT.shape[1]] == ref[0, -1].argmax()
    manifest = rt.load(tmp_path / precision, backend="onnxruntime").manifest.data
    (step,) = [p for p in manifest["passes"] if p["name"] == f"quantize_{precision}"]
    # One report per step, made and timed by run_pipeline, filled by the quantizer.
    # (perplexity needs every position's logits: --all-logits; a last-position graph gives top-1 only)
    assert step["matched"] > 0 and "top1_agreement" in step["extra"]["accuracy"] and step["seconds"] > 0
    assert step["nodes_after"] > step["nodes_before"]
