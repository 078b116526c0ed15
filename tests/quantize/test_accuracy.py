"""LLM accuracy metrics: perplexity and top-1 agreement, on logits whose answers are known."""

from __future__ import annotations

import numpy as np

from trtcompile.quantize.accuracy import compare


def _feed(ids, mask=None):
    ids = np.asarray(ids, np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids) if mask is None else np.asarray(mask, np.int64)}


def test_uniform_logits_have_perplexity_vocab_size():
    vocab = 50
    feed = _feed([[1, 2, 3, 4, 5, 6]])
    logits = np.zeros((1, 6, vocab), np.float32)
    result = compare([[logits]], [[logits]], [feed], language_model=True)
    assert np.isclose(result["perplexity"], vocab) and np.isclose(result["perplexity_fp32"], vocab)
    assert result["perplexity_tokens"] == 5  # the last position has no next token


def test_perplexity_follows_the_next_token_and_skips_padding():
    vocab, p = 10, 0.9
    ids = [[3, 7, 2, 0], [4, 4, 9, 9]]
    mask = [[1, 1, 1, 0], [1, 1, 1, 1]]  # padded tail in row 0
    # Candidate puts probability p on the true next token everywhere (and on 0 at padding).
    logits = np.zeros((2, 4, vocab), np.float32)
    hit = np.log(p * (vocab - 1) / (1 - p))
    for b, row in enumerate(ids):
        for t in range(3):
            logits[b, t, row[t + 1]] = hit
    reference = np.zeros_like(logits)
    result = compare([[reference]], [[logits]], [_feed(ids, mask)], language_model=True)
    assert result["perplexity_tokens"] == 2 + 3
    np.testing.assert_allclose(result["perplexity"], 1 / p, rtol=1e-6)
    np.testing.assert_allclose(result["perplexity_fp32"], vocab, rtol=1e-6)


def test_top1_agreement_and_last_position_logits():
    ref = np.zeros((1, 2, 4), np.float32)
    ref[0, :, 1] = 1
    cand = ref.copy()
    cand[0, 1, 3] = 2  # disagrees at the last position only
    feed = _feed([[0, 1, 2, 3, 1]])  # logits cover the last 2 of 5 positions
    result = compare([[ref]], [[cand]], [feed], language_model=True)
    assert result["top1_agreement"] == 0.5 and result["score"] == 0.5
    assert result["perplexity_tokens"] == 1  # position 3 predicts token 1; position 4 has no next


def test_kl_of_the_next_token_distribution_skips_padding():
    # Position 0: FP32 (0.5, 0.5) against (0.75, 0.25): KL = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25).
    # Position 1: equal. Position 2 is padding: its wildly different logits must not count.
    ref = np.zeros((1, 3, 2), np.float32)
    cand = ref.copy()
    cand[0, 0, 0] = np.log(3.0)
    cand[0, 2, 0] = 50.0
    result = compare([[ref]], [[cand]], [_feed([[1, 0, 1]], [[1, 1, 0]])], language_model=True)
    expected = (0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)) / 2  # mean over the 2 real tokens
    np.testing.assert_allclose(result["kl"], expected, rtol=1e-6)  # float32 ln 3
    assert compare([[ref]], [[ref]], [_feed([[1, 0, 1]])], language_model=True)["kl"] == 0.0
