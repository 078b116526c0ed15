"""Compile memory scales with the model: a regression guard on peak RSS above the import baseline.

A mid-size Llama (55M parameters, a 211 MiB checkpoint, a 32000-token tied vocabulary) compiles in
a subprocess (its own ru_maxrss). The goal is <= 3x the fp32 checkpoint above the import baseline.
Measured 2026-11-29: 5.4x before weights stayed on disk; 2.8x once export wrote external data,
passes read weights lazily, the exported IR no longer kept PyTorch's weights alive and reference
cases kept no inputs; 2.1x since the reference outputs wait on disk, the example inputs and
torch.export's traced graph are dropped after export, and the verifying ONNX Runtime session reads
the weights in place from model.onnx.data (no prepacked or transposed copies). The peak is
verification (the weights once, mapped, plus one case's inputs and outputs) or the reference
(PyTorch's weights plus one case). The guard sits at 2.6x so it does not flake, and fails on any
return of a second copy of the weights: PyTorch kept alive past the reference outputs (+1x), a
whole-model protobuf in the passes or in saving, ONNX Runtime copying the weights, whole-tensor
float64 comparisons.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


def midsize_llama(directory: Path) -> Path:
    import torch
    import transformers as tf

    config = tf.LlamaConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=2,
                            num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=512,
                            tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    tf.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


GOAL = 3.0  # the target: reached on this model (2.1x, see the module docstring)
GUARD = 2.6


@pytest.mark.slow
def test_compile_peak_memory_stays_proportional_to_the_checkpoint(tmp_path):
    checkpoint = midsize_llama(tmp_path / "llama-55m")
    weights = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    run = subprocess.run([sys.executable, str(HERE / "memory_probe.py"), str(checkpoint), str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    above = (result["peak_mib"] - result["baseline_mib"]) * 2**20
    assert above <= GUARD * weights, (f"compile peaked {above / 2**20:.0f} MiB above its import baseline, "
                                  f"{above / weights:.2f}x the {weights / 2**20:.0f} MiB checkpoint; "
                                  f"per stage: {result['stages_mib']}")
