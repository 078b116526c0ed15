"""The residual-stream rotation of bench/rotation_probe.py (QuaRot R1) is exact: the rotated model
computes the same logits and the same K/V caches as the original, in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.tiny_models import VOCAB, build
from trtcompile.bench.rotation_probe import _orthogonal, _paley12, _rotate


def test_hadamard_576_is_orthogonal():
    assert np.allclose(_paley12() @ _paley12().T, 12 * np.eye(12))
    q = _orthogonal(576, "hadamard", seed=3)
    np.testing.assert_allclose(q @ q.T, np.eye(576), atol=1e-12)
    assert np.allclose(np.abs(q), 1 / 24)  # every entry the same size: a Hadamard, not any orthogonal


@pytest.mark.parametrize("kind", ["orthogonal", "identity"])
def test_rotation_keeps_logits_and_kv_cache(kind):
    model = build("llama")
    with torch.no_grad():  # norm weights that are not ones, so that folding them matters
        g = torch.Generator().manual_seed(1)
        for p in model.parameters():
            if p.ndim == 1:
                p.copy_(torch.rand(p.shape, generator=g) + 0.25)
    ids = torch.randint(3, VOCAB, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = model(ids, use_cache=True)
        logits, cache = before.logits.clone(), [(layer.keys.clone(), layer.values.clone())
                                                for layer in before.past_key_values.layers]
    _rotate(model, _orthogonal(model.config.hidden_size, kind, seed=0))
    assert float((model.model.norm.weight - 1).abs().max()) == 0.0  # folded into the readers
    with torch.no_grad():
        after = model(ids, use_cache=True)
    torch.testing.assert_close(after.logits, logits, atol=2e-5, rtol=1e-5)
    for (k, v), layer in zip(cache, after.past_key_values.layers):
        torch.testing.assert_close(layer.keys, k, atol=2e-5, rtol=1e-5)  # K/V see only Q^T-rotated weights
        torch.testing.assert_close(layer.values, v, atol=2e-5, rtol=1e-5)
