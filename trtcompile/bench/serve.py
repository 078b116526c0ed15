"""`trtcompile serve` under load: streaming clients against a live server, and the runtime called directly.

    trtcompile bench serve [--clients 1,4,16] [--prompt 32] [--new-tokens 64] [--rounds 3] [--threads 1]
                           [--packages DIR]   # compile once into DIR, reuse on later runs
    python -m trtcompile.bench.serve

Compiles (into a temporary directory, or --packages) the randomly initialised Llama of `bench
generate` (7.3M parameters, vocab 8192, no eos: every request runs to max_tokens; the default
decoder profile with its decode batch -- the slots of a continuous-batching runtime -- raised to
--max-batch, 16) and a small BERT
(hidden 128, 2 layers), starts `trtcompile serve` on both as a separate process on 127.0.0.1, and
drives it with N concurrent streaming clients (httpx, /v1/completions with token-id prompts,
greedy). Per request: TTFT (request sent -> first token event), TPOT ((last - first token) /
(tokens - 1)); per level: tokens/s over the wall time. The first row calls `model.stream()` in
this process on the same package and threads: the server's overhead is the difference. Rows
alternate within each round, so load drift on a shared machine spreads over all of them.
Embeddings: requests/s with N clients sending one input each, against model.run at batch 1.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from trtcompile.bench.common import print_table


def build_packages(root: Path, max_batch: int) -> tuple[Path, Path]:
    import torch
    import transformers as tf
    import yaml

    from trtcompile.bench.generate import bench_config
    from trtcompile.compile import compile_package
    from trtcompile.export import kv_cache
    from trtcompile.progress import Progress

    torch.manual_seed(0)
    config = bench_config()
    tf.LlamaForCausalLM(config).eval().save_pretrained(root / "llama-ck")
    # The default decoder profile of the default KV-cache form, with a decode batch (the slots of a
    # continuous-batching runtime) of --max-batch, so that many clients decode together.
    form = {"kv_cache": "static"} if "kv_cache" in inspect.signature(kv_cache.default_profile).parameters else {}
    profile = kv_cache.default_profile(config.to_dict(), **form)
    for bucket in profile["buckets"].values():
        bucket["batch"][2] = max(bucket["batch"][2], max_batch)
    (root / "llama.yaml").write_text(yaml.safe_dump(profile))
    compile_package(str(root / "llama-ck"), root / "llama", profile_path=root / "llama.yaml", progress=Progress())

    bert = tf.BertConfig(vocab_size=8192, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=512, max_position_embeddings=256)
    tf.BertModel(bert).eval().save_pretrained(root / "bert-ck")
    (root / "bert.yaml").write_text(yaml.safe_dump({
        "inputs": {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
                   "token_type_ids": ["batch", "sequence"]},
        "buckets": {"short": {"batch": [1, 1, max_batch], "sequence": [1, 32, 128]}}}))
    compile_package(str(root / "bert-ck"), root / "bert", profile_path=root / "bert.yaml", progress=Progress())
    return root / "llama", root / "bert"


def start_server(llama: Path, bert: Path, threads: int, max_batch: int, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "trtcompile.cli", "serve", "--model", f"llama={llama}", "--model", f"bert={bert}",
           "--port", str(port), "--backend", "onnxruntime", "--threads", str(threads), "--max-batch", str(max_batch),
           "--max-queue", "256", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited:\n{log.read_text()}")
        try:
            httpx.get(f"{url}/health", timeout=1)
            return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not start in 120 s")


async def stream_once(client, url: str, prompt: list[int], new_tokens: int) -> tuple[float, float, int]:
    """(TTFT s, TPOT s, tokens) of one streamed greedy completion."""
    body = {"model": "llama", "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}: {await response.aread()}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            elif event["choices"] and event["choices"][0]["text"]:
                last = time.perf_counter()
                first = first or last
    return first - start, (last - first) / max(1, tokens - 1), tokens


async def server_level(url: str, clients: int, prompts: list[list[int]], new_tokens: int, requests: int):
    import httpx

    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        async def one_client(k: int):
            return [await stream_once(client, url, prompts[(k + i) % len(prompts)], new_tokens)
                    for i in range(requests)]

        start = time.perf_counter()
        results = await asyncio.gather(*(one_client(k) for k in range(clients)))
        wall = time.perf_counter() - start
    flat = [r for rs in results for r in rs]
    return [r[0] for r in flat], [r[1] for r in flat], sum(r[2] for r in flat) / wall


def direct_level(model, prompts: list[list[int]], new_tokens: int, requests: int):
    ttft, tpot, tokens = [], [], 0
    start = time.perf_counter()
    for i in range(requests):
        t0 = time.perf_counter()
        marks = [time.perf_counter() for _ in model.stream(np.asarray([prompts[i % len(prompts)]]),
                                                            max_new_tokens=new_tokens, stop_tokens=[])]
        ttft.append(marks[0] - t0)
        tpot.append((marks[-1] - marks[0]) / max(1, len(marks) - 1))
        tokens += len(marks)
    return ttft, tpot, tokens / (time.perf_counter() - start)


async def embed_level(url: str, clients: int, inputs: list[list[int]], seconds: float) -> float:
    import httpx

    done = 0
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients + 4)) as client:
        async def one_client(k: int):
            nonlocal done
            i = k
            while time.perf_counter() < deadline:
                r = await client.post(f"{url}/v1/embeddings", json={"model": "bert", "input": inputs[i % len(inputs)]})
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text}")
                done += 1
                i += clients

        start = time.perf_counter()
        await asyncio.gather(*(one_client(k) for k in range(clients)))
        return done / (time.perf_counter() - start)


def direct_embed(model, inputs: list[list[int]], seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        ids = np.asarray([inputs[done % len(inputs)]])
        model.run({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
        done += 1
    return done / (time.perf_counter() - start)


def p(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trtcompile bench serve", description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,4,16", help="concurrent streaming clients per level")
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (server and direct)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--embed-seconds", type=float, default=3.0)
    parser.add_argument("--packages", type=Path, help="keep the compiled packages here and reuse them next time")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.clients.split(",")]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from trtcompile import runtime

    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 8192, args.prompt).tolist() for _ in range(16)]
    inputs = [rng.integers(3, 8192, int(n)).tolist() for n in rng.integers(8, 32, 16)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        where = args.packages or tmp
        where.mkdir(parents=True, exist_ok=True)
        if (where / "llama" / "manifest.json").is_file() and (where / "bert" / "manifest.json").is_file():
            llama, bert = where / "llama", where / "bert"
        else:
            llama, bert = build_packages(where, args.max_batch)
        proc, url = start_server(llama, bert, args.threads, args.max_batch, tmp / "server.log")
        try:
            model = runtime.load(llama, backend="onnxruntime", threads=args.threads)
            encoder = runtime.load(bert, backend="onnxruntime", threads=args.threads)
            slots = json.loads(__import__("httpx").get(f"{url}/v1/models").text)["data"][0].get("slots")
            # Warm-up: both paths, every level once.
            direct_level(model, prompts, args.new_tokens, 1)
            for c in levels:
                asyncio.run(server_level(url, c, prompts, args.new_tokens, 1))
            rows: dict[str, list] = {"direct": [[], [], []], **{c: [[], [], []] for c in levels}}
            for _ in range(args.rounds):
                for key in rows:
                    if key == "direct":
                        got = direct_level(model, prompts, args.new_tokens, args.requests)
                    else:
                        got = asyncio.run(server_level(url, key, prompts, args.new_tokens, args.requests))
                    for acc, value in zip(rows[key], got):
                        acc.extend(value) if isinstance(value, list) else acc.append(value)
            table = []
            for key, (ttft, tpot, rate) in rows.items():
                name = "runtime direct, 1 caller" if key == "direct" else f"server, {key} client{'s' * (key > 1)}"
                table.append([name, len(ttft), p(ttft, 50), p(ttft, 99), p(tpot, 50), p(tpot, 99),
                              float(np.median(rate))])
            direct, one = table[0], table[1] if levels and levels[0] == 1 else None
            print_table(f"Streaming completions: Llama 7.3M (bench generate's), prompt {args.prompt}, "
                        f"{args.new_tokens} new tokens, greedy, ORT {args.threads} thread(s), server slots {slots}",
                        ["", "requests", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "TPOT p99 ms", "tokens/s"], table)
            if one:
                overhead = (one[4] - direct[4]) / direct[4] * 100
                ttft_ratio = table[-1][3] / one[3]
                print(f"server overhead per token at 1 client: {one[4] - direct[4]:+.3f} ms ({overhead:+.1f}% of the "
                      f"runtime's {direct[4]:.3f} ms; goal < 5%); TTFT +{one[2] - direct[2]:.2f} ms p50")
                print(f"p99 TTFT at {levels[-1]} clients / at 1 client: {ttft_ratio:.1f}x (goal <= 3x)")

            embed_rows = []
            direct_rate = [direct_embed(encoder, inputs, args.embed_seconds / 2) for _ in range(args.rounds)]
            for c in levels:
                rates = [asyncio.run(embed_level(url, c, inputs, args.embed_seconds)) for _ in range(args.rounds)]
                embed_rows.append([f"server, {c} client{'s' * (c > 1)}", float(np.median(rates))])
            embed_rows.insert(0, ["model.run direct, batch 1", float(np.median(direct_rate))])
            print_table("Embeddings: BERT hidden 128, 2 layers, 8-31 tokens per input, one input per request",
                        ["", "requests/s"], embed_rows)
            metrics = __import__("httpx").get(f"{url}/metrics").text
            fives = [line for line in metrics.splitlines()
                     if line.startswith("trtcompile_requests_total") and 'status="5' in line]
            print(f"5xx answers during the run: {fives or 'none'}")
            model.close()
            encoder.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


if __name__ == "__main__":
    main()
