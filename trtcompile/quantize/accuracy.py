"""How far a quantized graph is from the FP32 graph, on held-out data.

Embeddings (encoders): cosine of mean-pooled sentence embeddings (mask-aware) per sample, mean
and worst, plus max abs error of the raw outputs. Language models (a float output whose last axis
is the vocabulary, or `is_decoder`): top-1 agreement with the FP32 model over real tokens, the
perplexity of both on the text itself (each position predicting the next real token), and max
logit error, and the mean KL divergence of the next-token distribution from FP32's (`kl`: a
continuous measure, where top-1 over a few hundred tokens cannot tell one quantized layer from
another; the gate ranks LM layers by it). `score` is the number compared with the accuracy
target: mean cosine, or top-1 agreement.

Logits may cover every position or only the last few (a generation graph that computes
last-position logits): they are aligned with the last positions of `input_ids`.
"""

from __future__ import annotations

import numpy as np


def run_all(session, feeds: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    return [session.run(names, feed) for feed in feeds]


def compare(reference: list[list[np.ndarray]], candidate: list[list[np.ndarray]],
            feeds: list[dict[str, np.ndarray]], language_model: bool) -> dict:
    cosines, top1_hits, top1_total, max_abs = [], 0, 0, 0.0
    nll_ref = nll_cand = kl = 0.0
    nll_count = 0
    for ref_outs, cand_outs, feed in zip(reference, candidate, feeds):
        ref, cand = np.asarray(ref_outs[0], np.float64), np.asarray(cand_outs[0], np.float64)
        max_abs = max(max_abs, float(np.abs(ref - cand).max()) if ref.size else 0.0)
        mask = _mask(feed, ref)
        if language_model:
            agree = ref.argmax(-1) == cand.argmax(-1)
            if mask is not None:
                agree = agree[mask.astype(bool)]
            top1_hits += int(agree.sum())
            top1_total += int(agree.size)
            kl += _kl_sum(ref_outs[0], cand_outs[0], mask)
            labels = _next_tokens(feed, ref.shape[:2])
            if labels is not None:
                ids, valid = labels
                nll_ref += _nll(ref_outs[0], ids, valid)
                nll_cand += _nll(cand_outs[0], ids, valid)
                nll_count += int(valid.sum())
        cosines.extend(_pooled_cosines(ref, cand, mask))
    cos = np.asarray(cosines) if cosines else np.ones(1)
    result = {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "max_abs": max_abs,
              "samples": int(cos.size)}
    if language_model:
        result["top1_agreement"] = top1_hits / max(top1_total, 1)
        result["metric"], result["score"] = "top1_agreement", result["top1_agreement"]
        result["kl"] = kl / max(top1_total, 1)
        if nll_count:
            result["perplexity"] = float(np.exp(nll_cand / nll_count))
            result["perplexity_fp32"] = float(np.exp(nll_ref / nll_count))
            result["perplexity_ratio"] = result["perplexity"] / result["perplexity_fp32"]
            result["perplexity_tokens"] = nll_count
    else:
        result["metric"], result["score"] = "cosine_mean", result["cosine_mean"]
    return result


def _next_tokens(feed: dict[str, np.ndarray], logits_shape) -> tuple[np.ndarray, np.ndarray] | None:
    """(next token id, valid) per logits position [B, L]: position t predicts input t+1, valid where
    both are real (attention mask 1) tokens of the text; None without input_ids."""
    ids = feed.get("input_ids")
    if ids is None or ids.ndim != 2:
        return None
    batch, length = logits_shape
    seq = ids.shape[1]
    if batch != ids.shape[0] or length > seq:
        return None
    mask = feed.get("attention_mask")
    real = np.ones_like(ids, bool) if mask is None else np.asarray(mask)[:, -seq:].astype(bool)
    start = seq - length
    nxt = np.zeros((batch, length), np.int64)
    valid = np.zeros((batch, length), bool)
    nxt[:, :-1] = ids[:, start + 1:]
    valid[:, :-1] = real[:, start:-1] & real[:, start + 1:]
    return nxt, valid


def _nll(logits: np.ndarray, ids: np.ndarray, valid: np.ndarray) -> float:
    """Sum of -log softmax(logits)[next token] over valid positions (row by row: vocabularies are big)."""
    total = 0.0
    for b in range(valid.shape[0]):
        pos = np.nonzero(valid[b])[0]
        if not pos.size:
            continue
        rows = np.asarray(logits[b, pos], np.float64)
        peak = rows.max(axis=1, keepdims=True)
        lse = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
        total += float((lse - rows[np.arange(pos.size), ids[b, pos]]).sum())
    return total


def _kl_sum(ref: np.ndarray, cand: np.ndarray, mask: np.ndarray | None) -> float:
    """Sum over positions (real tokens where `mask` says) of KL(softmax(ref) || softmax(cand))."""
    ref = np.asarray(ref, np.float64).reshape(-1, ref.shape[-1])
    cand = np.asarray(cand, np.float64).reshape(-1, cand.shape[-1])
    if mask is not None:
        keep = np.asarray(mask).reshape(-1).astype(bool)
        ref, cand = ref[keep], cand[keep]
    total = 0.0
    for r, c in zip(np.array_split(ref, max(1, len(ref) // 64)), np.array_split(cand, max(1, len(cand) // 64))):
        log_p = r - _logsumexp(r)
        log_q = c - _logsumexp(c)
        total += float((np.exp(log_p) * (log_p - log_q)).sum())
    return total


def _logsumexp(rows: np.ndarray) -> np.ndarray:
    peak = rows.max(axis=1, keepdims=True)
    return peak + np.log(np.exp(rows - peak).sum(axis=1, keepdims=True))


def pooled(output: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Mean over the sequence axis of [B, S, H] (mask-aware); other ranks flatten per sample."""
    output = np.asarray(output, np.float64)
    if output.ndim == 3:
        if mask is None:
            return output.mean(axis=1)
        m = mask[..., None].astype(np.float64)
        return (output * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1.0)
    return output.reshape(output.shape[0], -1)


def _pooled_cosines(ref, cand, mask) -> list[float]:
    a, b = pooled(ref, mask), pooled(cand, mask)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30
    return list(num / den)


def _mask(feed: dict[str, np.ndarray], output: np.ndarray) -> np.ndarray | None:
    mask = feed.get("attention_mask")
    if mask is None or output.ndim < 2 or mask.shape[:2] != output.shape[:2]:
        return None
    return np.asarray(mask)
