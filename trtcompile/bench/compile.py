"""`trtcompile bench compile`: time and peak memory of compiling real-size LLMs, per stage, side by side
with ONNX Runtime GenAI's model builder on the same checkpoints.

    trtcompile bench compile                         # SmolLM2-135M: its GGUF and its checkpoint directory
    trtcompile bench compile --synthetic-1b          # + a random 1.1B Llama saved in bf16
    trtcompile bench compile --checkpoint DIR ...    # any checkpoint directories (no SmolLM2 then)
    trtcompile bench compile --gguf FILE ...         # GGUF files (trtcompile only: the builder takes f16/f32 GGUF)
    trtcompile bench compile --rounds 3 --no-peer

SmolLM2 comes twice: the Q4_1 GGUF (what samples/smollm2.py compiles) and the checkpoint directory
converted from it once (bench/smollm2.py), which both tools read. Every compile runs in its own
subprocess, so its peak RSS is its own (os.wait4's ru_maxrss); the order of the tools alternates
from round to round; figures are medians over rounds. Memory-heavy: run it under `flock` on a shared
machine.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("TRTCOMPILE_BENCH_CACHE", Path(tempfile.gettempdir()) / "trtcompile-bench"))


def run_measured(cmd: list[str], env: dict | None = None, log: Path | None = None) -> dict:
    """Wall time, peak RSS (of the child alone) and exit status of a command."""
    start = time.perf_counter()
    with open(log or os.devnull, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": time.perf_counter() - start, "peak_gib": usage.ru_maxrss / 2**20,
            "cpu_s": usage.ru_utime + usage.ru_stime, "ok": proc.returncode == 0, "log": str(log or "")}


def synthetic_1b_checkpoint() -> Path:
    """A random Llama with 1.1B parameters (TinyLlama's shape), saved in bf16 to be quick to make."""
    target = CACHE / "synthetic-llama-1.1b-bf16"
    if (target / "config.json").is_file():
        return target
    import torch
    import transformers

    config = transformers.LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                      num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                                      max_position_embeddings=2048, tie_word_embeddings=False,
                                      bos_token_id=1, eos_token_id=2, dtype="bfloat16")
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # built in bf16 directly: never a 4.4 GB fp32 copy
    try:
        with torch.device("meta"):
            model = transformers.LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    # Uninitialised storage, filled below; non-persistent buffers (rotary) are rebuilt on load.
    model = model.to_empty(device="cpu")
    for p in model.parameters():  # small random weights, layer by layer (no fp32 copy of the whole model)
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.ones_(p)
    model.save_pretrained(target)
    return target


def fp32_bytes(checkpoint: Path) -> int:
    """The checkpoint's size in float32 (bf16/fp16 checkpoints count double), per the goal's rule."""
    import json

    config = json.loads((checkpoint / "config.json").read_text())
    size = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
    half = str(config.get("torch_dtype") or config.get("dtype") or "float32") in ("bfloat16", "float16")
    return size * (2 if half else 1)


def gguf_fp32_bytes(path: Path) -> int:
    """A GGUF's weights in float32 (what they are dequantized to), from its tensor table."""
    import gguf

    return 4 * sum(int(t.n_elements) for t in gguf.GGUFReader(str(path)).tensors)


STAGES = ("load", "export", "reference", "optimize", "package", "verify")


def _jobs(args) -> tuple[list[tuple[str, str, Path, list[str]]], dict[str, Path]]:
    """(model, tool, output dir, command) per compile, in the first round's order; and each model's path."""
    python = sys.executable
    models: list[tuple[str, Path]] = [(p.name, p) for p in args.gguf] + [(p.name, p) for p in args.checkpoint]
    if not args.checkpoint and not args.gguf:
        from trtcompile.bench import smollm2

        models = [(smollm2.GGUF_NAME, smollm2.gguf_path()), ("smollm2-135m-instruct (dir)", smollm2.checkpoint())]
    if args.synthetic_1b:
        models.append(("synthetic-llama-1.1b-bf16 (dir)", synthetic_1b_checkpoint()))
    peer = not args.no_peer and importlib.util.find_spec("onnxruntime_genai") is not None
    jobs = []
    for i, (name, spec) in enumerate(models):
        out = args.work / f"{i}-ours"
        jobs.append((name, "trtcompile compile (fp32)", out,
                     [python, "-m", "trtcompile.cli", "compile", str(spec), "-o", str(out), "-q"]))
        if peer and spec.is_dir():
            out = args.work / f"{i}-genai"
            jobs.append((name, "ORT GenAI builder (fp32, cpu)", out,
                         [python, "-m", "onnxruntime_genai.models.builder", "-i", str(spec), "-o", str(out),
                          "-p", "fp32", "-e", "cpu", "-c", str(args.work / "genai-cache")]))
    return jobs, {name: spec for name, spec in models}


def main(argv: list[str]) -> None:
    import json
    import statistics

    from trtcompile.bench.common import print_table

    parser = argparse.ArgumentParser(prog="trtcompile bench compile")
    parser.add_argument("--checkpoint", action="append", type=Path, default=[], help="a checkpoint directory")
    parser.add_argument("--gguf", action="append", type=Path, default=[], help="a .gguf file")
    parser.add_argument("--synthetic-1b", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-peer", action="store_true", help="skip ONNX Runtime GenAI's builder")
    parser.add_argument("--keep", type=Path, help="keep outputs and logs here")
    args = parser.parse_args(argv)
    for path in args.checkpoint:
        if not (path / "config.json").is_file():
            sys.exit(f"--checkpoint {path}: not a checkpoint directory (no config.json)")
    for path in args.gguf:
        if not path.is_file():
            sys.exit(f"--gguf {path}: no such file")
    args.work = args.keep or Path(tempfile.mkdtemp(prefix="trtcompile-bench-compile-"))
    args.work.mkdir(parents=True, exist_ok=True)
    jobs, specs = _jobs(args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for model, tool, out, cmd in (jobs if r % 2 == 0 else list(reversed(jobs))):  # alternate who goes first
            shutil.rmtree(out, ignore_errors=True)
            result = run_measured(cmd, env, args.work / f"{out.name}-round{r + 1}.log")
            if tool.startswith("trtcompile") and result["ok"]:
                build = json.loads((out / "manifest.json").read_text())["build"]
                result["stages"] = {k: (v, (build.get("peak_rss_mib") or {}).get(k))
                                    for k, v in build["timings_s"].items()}
            results.setdefault((model, tool), []).append(result)
            print(f"round {r + 1}: {model} / {tool}: {result['seconds']:.0f} s, {result['peak_gib']:.2f} GiB"
                  f"{'' if result['ok'] else ' FAILED, see ' + result['log']}", file=sys.stderr)
            if not args.keep:
                shutil.rmtree(out, ignore_errors=True)

    rows, stage_rows = [], []
    for (model, tool), runs in results.items():
        spec = specs[model]
        fp32 = fp32_bytes(spec) if spec.is_dir() else gguf_fp32_bytes(spec)
        peak = statistics.median(r["peak_gib"] for r in runs)
        rows.append([model, tool, "yes" if all(r["ok"] for r in runs) else "FAILED",
                     statistics.median(r["seconds"] for r in runs), statistics.median(r["cpu_s"] for r in runs),
                     peak, peak * 2**30 / fp32])
        staged = [r["stages"] for r in runs if "stages" in r]
        if staged:
            cells = []
            for stage in STAGES:
                times = [st[stage][0] for st in staged if stage in st]
                peaks = [st[stage][1] for st in staged if stage in st and st[stage][1]]
                cells.append("-" if not times else f"{statistics.median(times):.0f} s / "
                             f"{(statistics.median(peaks) if peaks else 0) / 1024:.1f} GiB")
            stage_rows.append([model, *cells])
    note = (f"medians over {args.rounds} round(s), tools alternating; peak RSS of the compile's own subprocess "
            "(includes ~0.4 GiB of imports); x fp32 = peak / the weights' float32 size. A shared 2-core "
            "machine inflates wall times: compare rows of one run")
    print_table("compile: wall time, CPU time and peak RSS", ["model", "tool", "ok", "wall s", "cpu s", "peak GiB",
                                                              "x fp32 weights"], rows, note=note)
    if stage_rows:
        print_table("trtcompile compile per stage (time / peak RSS, from the manifest)", ["model", *STAGES],
                    stage_rows, note="peak RSS per stage: sampled every 50 ms while the stage runs (progress.RssSampler)")
