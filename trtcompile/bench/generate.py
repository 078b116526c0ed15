"""LLM decoding on CPU: our runtime (ONNX Runtime backend) against HF `generate`, in one run.

    trtcompile bench generate [--prompt 64] [--new-tokens 64] [--runs 5] [--rounds 3] [--threads 1]
    python -m trtcompile.bench.generate

The model is a randomly initialised Llama (GQA, 4 layers, hidden 256, vocab 8192, ~7M
parameters): small enough for two CPU cores, big enough that the model, not Python, dominates.
Table 1: time to first token and time per output token (median, p99) at batch 1, greedy.
Table 2: per-token decode time at context 16, 64, 256, 1024, for the runtime's bound KV cache
(ONNX Runtime IOBinding, preallocated ping-pong buffers), for the generic Model.run path (the
cache comes back as new arrays every step), and for HF. What still grows with context in ours is
the graph's own concat(past, new) copy of the cache (TensorRT's Attention rules put it outside
the node) and attention itself.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from trtcompile.bench.common import print_table

CONTEXTS = (16, 64, 256, 1024)


def bench_config():
    import transformers as tf

    return tf.LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                          num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048,
                          bos_token_id=1, eos_token_id=None, pad_token_id=0)


def bench_profile(max_prompt: int) -> dict:
    from trtcompile.export.kv_cache import decoder_profile_inputs

    return {"inputs": decoder_profile_inputs(),
            "buckets": {"prefill": {"batch": [1, 1, 1], "sequence": [1, 64, max_prompt], "past_sequence": [0, 0, 0]},
                        "decode": {"batch": [1, 1, 1], "sequence": [1, 1, 1], "past_sequence": [1, 256, 2047]}}}


def stats(samples_ms: list[float]) -> tuple[float, float]:
    arr = np.asarray(samples_ms)
    return float(np.median(arr)), float(np.percentile(arr, 99))


def time_ours(model, ids: np.ndarray, new_tokens: int, **options) -> list[float]:
    """Timestamps (ms from the call) of each token the runtime streams."""
    start = time.perf_counter()
    marks = []
    for _ in model.stream(ids, max_new_tokens=new_tokens, stop_tokens=[], **options):
        marks.append((time.perf_counter() - start) * 1e3)
    return marks


def time_hf(hf, ids: np.ndarray, new_tokens: int) -> list[float]:
    import torch

    class Marks:  # a streamer: generate() calls put() with the prompt, then once per new token
        def __init__(self):
            self.marks, self.prompt_seen = [], False

        def put(self, _):
            if self.prompt_seen:
                self.marks.append((time.perf_counter() - start) * 1e3)
            self.prompt_seen = True

        def end(self):
            pass

    streamer = Marks()
    start = time.perf_counter()
    with torch.inference_mode():
        hf.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, streamer=streamer,
                    pad_token_id=0)
    return streamer.marks


def interleaved(runs: dict, rounds: int) -> dict[str, tuple[list[float], list[float]]]:
    """TTFT samples and per-token intervals per candidate, one call each per round (after a warm-up).

    These machines are shared and noisy; round-robin spreads load drift across the candidates.
    """
    for run in runs.values():
        run()
    out = {name: ([], []) for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            marks = run()
            out[name][0].append(marks[0])
            out[name][1].extend(np.diff(marks))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trtcompile bench generate", description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens for table 1")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5, help="generate calls per row of table 1")
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed per call in table 2")
    parser.add_argument("--rounds", type=int, default=3, help="calls per cell of table 2")
    # One thread by default: on a shared 2-core machine PyTorch's OpenMP threads spin against other
    # processes and made HF generate 3-4x slower at 2 threads (ORT suffered less), an unfair table.
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for ORT and torch")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    import transformers as tf
    import yaml

    from trtcompile import runtime
    from trtcompile.compile import compile_package
    from trtcompile.progress import Progress
    from trtcompile.runtime.generate import HostKVCache

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    hf = tf.LlamaForCausalLM(bench_config()).eval()
    params = sum(p.numel() for p in hf.parameters()) / 1e6
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hf.save_pretrained(tmp / "checkpoint")
        max_prompt = max(max(CONTEXTS), args.prompt)
        (tmp / "profile.yaml").write_text(yaml.safe_dump(bench_profile(max_prompt)))
        compile_package(str(tmp / "checkpoint"), tmp / "pkg", profile_path=tmp / "profile.yaml", progress=Progress())
        model = runtime.load(tmp / "pkg", backend="onnxruntime", threads=args.threads)

        ids = rng.integers(3, 8192, (1, args.prompt)).astype(np.int64)
        ours = model.generate(ids, max_new_tokens=16, stop_tokens=[])
        with torch.inference_mode():
            theirs = hf.generate(input_ids=torch.from_numpy(ids), max_new_tokens=16, min_new_tokens=16,
                                 do_sample=False, pad_token_id=0).numpy()
        same = "identical" if np.array_equal(ours, theirs) else "DIFFERENT"

        names = {"ours": "trtcompile runtime (ORT, bound KV cache)", "hf": "HF generate (PyTorch eager)"}
        timed = interleaved({"ours": lambda: time_ours(model, ids, args.new_tokens),
                             "hf": lambda: time_hf(hf, ids, args.new_tokens)}, args.runs)
        rows = []
        for key, (ttft, tpot) in timed.items():
            rows.append([names[key], *stats(ttft), *stats(tpot), 1e3 / stats(tpot)[0]])
        rows.append(["ratio HF / ours", rows[1][1] / rows[0][1], rows[1][2] / rows[0][2],
                     rows[1][3] / rows[0][3], rows[1][4] / rows[0][4], ""])
        print_table(f"Llama {params:.1f}M params, batch 1, prompt {args.prompt}, {args.new_tokens} new tokens, greedy, "
                    f"{args.threads} threads, {args.runs} runs",
                    ["", "TTFT median ms", "TTFT p99 ms", "per token median ms", "per token p99 ms", "tokens/s"], rows,
                    note=f"greedy tokens vs HF over 16 steps: {same}")

        rows = []
        for context in CONTEXTS:
            ctx_ids = rng.integers(3, 8192, (1, context)).astype(np.int64)
            model.generate(ctx_ids, max_new_tokens=args.steps + 1, stop_tokens=[])  # sizes the bound cache
            bound = model._kv_cache
            host = HostKVCache(model, bound.layout, bound.per_token, bound.capacity, bound.dtypes)

            def with_cache(cache):
                model._kv_cache = cache
                return time_ours(model, ctx_ids, args.steps + 1)

            timed = interleaved({"bound": lambda: with_cache(bound), "host": lambda: with_cache(host),
                                 "hf": lambda: time_hf(hf, ctx_ids, args.steps + 1)}, args.rounds)
            model._kv_cache = bound
            rows.append([context, *(v for key in ("bound", "host", "hf") for v in stats(timed[key][1]))])
        base = rows[0][1]
        for row in rows:
            row.append(row[1] / base)
        print_table(f"Per-token decode time by context length (ms; {args.steps} steps x {args.rounds} calls per cell)",
                    ["context", "ours bound median", "ours bound p99", "ours Model.run median", "ours Model.run p99",
                     "HF median", "HF p99", "ours vs context 16"], rows,
                    note="bound: IOBinding onto preallocated ping-pong buffers; Model.run: present returned as "
                         "new arrays and fed back each step")
        model.close()


if __name__ == "__main__":
    main()
