"""Does a residual-stream rotation help INT4 weights? A probe on SmolLM2-135M (PyTorch, CPU).

    python -m trtcompile.bench.rotation_probe [--variants rtn fold rtn+hadamard rtn+orthogonal gptq gptq+hadamard]

QuaRot / SpinQuant's R1: fold each RMSNorm's weight g into the MatMuls that read the norm (its
weight becomes ones), then rotate the residual stream by an orthogonal Q: embedding rows E -> E Q,
every reader W (q/k/v/gate/up and the LM head, as [K, N]) -> Q^T W, every writer (o_proj,
down_proj) -> W Q. RMSNorm commutes with Q once its weight is ones (||h Q|| = ||h||), so the
rotated model computes the same logits in exact arithmetic, and K/V (computed from Q^T-rotated
weights on rotated inputs) are unchanged. Rotation makes weights incoherent along K, which
INT4 blocks are said to like.

Each variant quantizes every decoder MatMul (LM head float) to INT4, symmetric, block 128 where K
allows it (64 where K = 576, as `--precision int4` does), by round-to-nearest or GPTQ (the repo's
`gptq_round`, damping 0.1, Gram matrices from the first 48 lines of samples/calibration.txt), and
prints perplexity on the held-out rows `bench precision --llm` uses (samples/evaluation.txt, 8 x
128 tokens) against FP32's. Variants: `rtn`, `gptq` (no rotation); `fold` (norm weights folded,
Q = I: the fold alone); `+hadamard` (H12 x H12 x H4, random column signs) or `+orthogonal` (random, QR) rotations.

Measured 2026-11-30 (shared machine; perplexity ratio to FP32 47.04): rtn 1.441, fold 3.041,
rtn+hadamard 2.700, rtn+orthogonal 3.208, gptq 1.410, gptq+hadamard 1.461; the rotated FP32 model's
logits differ by 2.6e-4 at most. SmolLM2's weights here are a dequantized Q4_1 GGUF: each block of
32 along K holds about 13 distinct values, a lattice that unrotated INT4 blocks partly keep and
that any fold or rotation of the weights destroys, so the probe says little about true FP32
checkpoints, where QuaRot and SpinQuant report the opposite.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_CALIBRATION_LINES = 48  # what `bench precision --llm` calibrates on (3/4 of 64 lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="*", default=["rtn", "fold", "rtn+hadamard", "rtn+orthogonal"],
                        help="rtn, gptq, fold, each optionally +hadamard or +orthogonal (gptq: minutes)")
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch

    from trtcompile.bench.smollm2 import checkpoint

    torch.set_num_threads(1)
    path = checkpoint()
    evaluation, calibration = _texts(path)
    reference = _logits(_load(path), evaluation)
    base = _perplexity(reference, evaluation)
    print(f"fp32 perplexity {base:.4f}")
    rotated = _load(path)
    _rotate(rotated, _orthogonal(rotated.config.hidden_size, "hadamard", args.seed))
    drift = float((_logits(rotated, evaluation) - reference).abs().max())
    print(f"rotated fp32: max |logit difference| {drift:.3g}")
    results = {"fp32": base, "rotation_drift": drift}
    for variant in args.variants:
        start = time.perf_counter()
        method, _, rotation = variant.partition("+")
        model = _load(path)
        if method == "fold" or rotation:
            q = _orthogonal(model.config.hidden_size, rotation or "identity", args.seed)
            _rotate(model, q)
        method = "rtn" if method == "fold" else method
        grams = _grams(model, calibration) if method == "gptq" else None
        _quantize(model, method, args.block, grams)
        logits = _logits(model, evaluation)
        ratio = _perplexity(logits, evaluation) / base
        top1 = float((logits.argmax(-1) == reference.argmax(-1)).float().mean())
        results[variant] = {"perplexity_ratio": ratio, "top1": top1}
        print(f"{variant:20s} perplexity {ratio:.4f}x FP32, top-1 {top1:.4f} ({time.perf_counter() - start:.0f}s)",
              flush=True)
    return results


def _texts(path: Path):
    import torch
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)

    def lines(name: str) -> list[str]:
        text = (SAMPLES / name).read_text().splitlines()
        return [ln for ln in text if ln.strip() and not ln.startswith("#")]

    # The same rows as bench/precision_llm.py's _eval_feeds: one token stream, 8 rows of 128.
    stream = [t for ids in tokenizer(lines("evaluation.txt"), add_special_tokens=False)["input_ids"] for t in ids]
    evaluation = torch.tensor(stream[:8 * 128]).reshape(8, 128)
    calibration = [torch.tensor(ids)[None] for ids in
                   tokenizer(lines("calibration.txt")[:_CALIBRATION_LINES], add_special_tokens=False)["input_ids"]]
    return evaluation, calibration


def _load(path: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True).eval()


def _logits(model, ids):
    import torch

    with torch.no_grad():
        return model(ids).logits


def _perplexity(logits, ids) -> float:
    import torch

    logp = torch.log_softmax(logits[:, :-1].double(), -1)
    return math.exp(float(-logp.gather(-1, ids[:, 1:, None]).mean()))


def _linears(model):
    for i, layer in enumerate(model.model.layers):
        for name in _LINEARS:
            yield f"{i}.{name}", layer.get_submodule(name)


def _orthogonal(n: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "identity":
        return np.eye(n)
    if kind == "orthogonal":
        q, r = np.linalg.qr(rng.standard_normal((n, n)))
        return q * np.sign(np.diag(r))[None]
    h12 = _paley12()
    h4 = np.array([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], np.float64)
    h = np.kron(np.kron(h12, h12), h4)
    if h.shape != (n, n):
        raise ValueError(f"no Hadamard matrix of size {n} here (576 only): use --variants ...+orthogonal")
    return h * rng.choice([-1.0, 1.0], n)[None] / math.sqrt(n)


def _paley12() -> np.ndarray:
    """The Hadamard matrix of order 12 (Paley's construction, q = 11)."""
    q = 11
    residues = {(x * x) % q for x in range(1, q)}
    chi = np.array([0.0] + [1.0 if x in residues else -1.0 for x in range(1, q)])
    jacobsthal = np.array([[chi[(j - i) % q] for j in range(q)] for i in range(q)])
    s = np.zeros((12, 12))
    s[0, 1:], s[1:, 0], s[1:, 1:] = 1.0, -1.0, jacobsthal
    return s + np.eye(12)


def _rotate(model, q: np.ndarray) -> None:
    """Fold the norms' weights into their readers, then rotate the residual stream by q (HF
    Linear weights are [N, K]: a reader's W [K, N] -> Q^T W is weight @ Q, a writer's W Q is Q^T @ weight)."""
    import torch

    q = torch.tensor(q, dtype=torch.float64)
    with torch.no_grad():
        embedding = model.model.embed_tokens.weight.double()
        head = model.lm_head.weight.double() * model.model.norm.weight.double()[None]
        model.lm_head.weight = torch.nn.Parameter((head @ q).float())  # untied: its own table
        model.model.norm.weight.fill_(1.0)
        model.model.embed_tokens.weight = torch.nn.Parameter((embedding @ q).float())
        for layer in model.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            for norm, readers in ((layer.input_layernorm, (attention.q_proj, attention.k_proj, attention.v_proj)),
                                  (layer.post_attention_layernorm, (mlp.gate_proj, mlp.up_proj))):
                g = norm.weight.double()[None]
                for linear in readers:
                    linear.weight.copy_(((linear.weight.double() * g) @ q).float())
                norm.weight.fill_(1.0)
            for linear in (attention.o_proj, mlp.down_proj):
                linear.weight.copy_((q.T @ linear.weight.double()).float())
    model.config.tie_word_embeddings = False


def _grams(model, calibration) -> dict[str, np.ndarray]:
    import torch

    grams, hooks = {}, []
    for name, linear in _linears(model):
        def hook(module, inputs, output, name=name):
            x = inputs[0].reshape(-1, inputs[0].shape[-1]).double()
            grams[name] = grams.get(name, 0) + (x.T @ x).numpy()
        hooks.append(linear.register_forward_hook(hook))
    with torch.no_grad():
        for ids in calibration:
            model(ids)
    for h in hooks:
        h.remove()
    return grams


def _quantize(model, method: str, block: int, grams) -> None:
    import torch

    from trtcompile.quantize.blocks import INT4_MAX, INT4_MIN, block_for, fake_quantize
    from trtcompile.quantize.gptq import gptq_round

    for name, linear in _linears(model):
        w = linear.weight.detach().numpy().T.astype(np.float32)  # [K, N]
        b = block_for(w.shape[0], block)
        if method == "gptq":
            q, s = gptq_round(w, grams[name], INT4_MAX, group=b,
                              grid=lambda v: np.clip(np.rint(v), INT4_MIN, INT4_MAX))
            w = (q.reshape(-1, b, q.shape[1]) * s[:, None, :]).reshape(q.shape)
        else:
            w = fake_quantize(w, b, True)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(np.ascontiguousarray(w.T), dtype=torch.float32))


if __name__ == "__main__":
    main()
