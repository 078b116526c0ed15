"""LLM precision benchmark: SmolLM2-135M (real weights) in every precision, and ONNX Runtime GenAI's int4.

    trtcompile bench precision --llm [--new-tokens 32] [--rounds 4] [--threads 2] [--out results.json]

One export and one fusion pass; each precision step then runs on the same FP32 graph and is
written as a package (ONNX only, no engines here). Per row, on held-out text (samples/evaluation.txt,
packed into rows; calibration uses samples/calibration.txt):
  perplexity of the text, and its ratio to FP32; top-1 agreement with FP32's next-token choice;
  package size; ONNX Runtime CPU time per generated token (greedy decode, batch 1), the rows
  timed round-robin within one run, medians.
INT4 rows run their activations in FP32 here (`--int4-activations fp32`: FP16 on a CPU is casts
around every op); TensorRT packages default to FP16 activations.
ONNX Runtime GenAI's int4 comes from its model builder (`-p int4 -e cpu`, its defaults: block 32,
asymmetric, round-to-nearest) on the same checkpoint; its accuracy is measured by running its
ONNX graph in ONNX Runtime on the same rows, its speed with its own generator loop.

Caveat: the only SmolLM2 weights reachable here are a dequantized Q4_1 GGUF (asymmetric, block
32), so asymmetric block-32 INT4 can reproduce them almost exactly. Block 128 symmetric is the
honest figure for INT4; MiniLM (`trtcompile bench precision`) has true FP32 weights.
It compiles several SmolLM2 variants (about 8 GB at the peak): run it on a machine with room for that.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


GENAI_ROW, GENAI_HUGE_ROW = "ORT GenAI int4", "ORT GenAI int4, huge pages"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llm", action="store_true", help="(selects this benchmark)")
    parser.add_argument("--checkpoint", type=Path, help="a Llama-family checkpoint dir (default: SmolLM2 from its GGUF)")
    parser.add_argument("--eval-length", type=int, default=128, help="tokens per held-out row")
    parser.add_argument("--eval-rows", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4, help="timing rounds (each row once per round)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spinning", action="store_true", help="let both runtimes' idle ORT threads spin "
                        "(default off, our runtime's default; GenAI is set the same either way)")
    parser.add_argument("--only", nargs="*", help="row names to run (default: all)")
    parser.add_argument("--no-genai", action="store_true", help="skip ONNX Runtime GenAI")
    parser.add_argument("--timing-lock", type=Path, help="hold this lock file (flock) while timing, e.g. a "
                        "shared machine's benchmark lock; preparation runs without it")
    parser.add_argument("--out", type=Path, help="write the results as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from trtcompile.bench.common import print_table

    start = time.perf_counter()
    if args.checkpoint is None:
        from trtcompile.bench.smollm2 import checkpoint

        args.checkpoint = checkpoint()
    with tempfile.TemporaryDirectory(prefix="trtcompile-bench-llm-") as tmp:
        work = Path(tmp)
        rows, meta = _our_rows(args, work)
        wanted = [name for name in (GENAI_ROW, GENAI_HUGE_ROW) if not args.only or name in args.only]
        if not args.no_genai and wanted:
            genai = _genai_row(args, work, meta)
            # The same build with its weights on 2 MiB pages, as our runtime puts ours (runtime/huge_pages.py).
            variants = {GENAI_ROW: genai,
                        GENAI_HUGE_ROW: {**genai, "stream_factory": partial(genai["stream_factory"], huge_pages=True)}}
            for name in wanted:
                rows[name] = variants[name]
        _measure_accuracy(rows, meta)
        with _file_lock(args.timing_lock):
            _measure_speed(rows, args)
        results = {}
        table = []
        base = rows["fp32"]
        for name, row in rows.items():
            acc = row["accuracy"]
            results[name] = {k: v for k, v in row.items() if k not in ("model", "logits")}
            table.append([name, f"{acc['perplexity']:.4f}", f"{acc['perplexity'] / base['accuracy']['perplexity']:.4f}",
                          f"{acc['top1']:.4f}", f"{row['size_mb']:.1f}",
                          f"{row['ms_per_token']:.2f}", f"{row['ms_per_token'] / base['ms_per_token']:.2f}",
                          f"{row.get('ttft_ms', float('nan')):.0f}"])
    print_table(
        f"{args.checkpoint.name}: held-out text {meta['eval_tokens']} tokens ({args.eval_rows} rows x {args.eval_length}); "
        f"decode batch 1, prompt {args.prompt_tokens}, {args.new_tokens} new tokens, {args.threads} threads "
        f"(spinning {'on' if args.spinning else 'off'}, ours and GenAI's alike), "
        f"rows timed round-robin x{args.rounds} over {SPEED_COPIES} sessions each, created in mirrored order",
        ["variant", "perplexity", "vs fp32", "top-1 vs fp32", "size MB", "ms/token", "vs fp32", "TTFT ms"], table,
        note="INT4 rows: FP32 activations on CPU; ORT MatMulNBits accuracy level "
             f"{meta['accuracy_level']}. Caveat: SmolLM2's weights are a dequantized Q4_1 GGUF (asymmetric, "
             f"block 32); block-128 symmetric is the honest INT4 figure. {time.perf_counter() - start:.0f}s in all")
    for name, row in rows.items():
        if row.get("note"):
            print(f"  {name}: {row['note']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    return results


# ---------------------------------------------------------------------------------------------
VARIANTS = {
    # name: (precision, CalibrationSettings overrides)
    "fp32": ("fp32", {}),
    "fp16": ("fp16", {}),
    "int8 SmoothQuant": ("int8", {}),
    # INT4 rows keep the LM head float (the default, as ModelOpt's INT4 AWQ recipe does) unless named.
    "int4 RTN b128 sym": ("int4", {"int4_method": "rtn"}),
    "int4 AWQ b128 sym": ("int4", {"int4_method": "awq"}),
    "int4 AWQ b128 sym, int4 lm_head": ("int4", {"int4_method": "awq", "int4_lm_head": True}),
    # The same package as "int4 AWQ b128 sym", run with MatMulNBits computing in FP32 (accuracy level 0).
    "int4 AWQ b128 sym, ORT level 0": ("same", {"package_of": "int4 AWQ b128 sym", "accuracy_level": 0}),
    "int4 AWQ+GPTQ b128 sym": ("int4", {"int4_method": "gptq"}),
    "int4 AWQ b32 sym": ("int4", {"int4_method": "awq", "int4_block_size": 32}),
    "int4 AWQ+GPTQ b32 sym": ("int4", {"int4_method": "gptq", "int4_block_size": 32}),
    # More calibration: all of samples/calibration.txt (157 lines, 3/4 for calibration) instead of
    # 64, and 1024 activation rows per AWQ search instead of 256; GPTQ also with act-order.
    "int4 AWQ b128 sym, 157 lines": ("int4", {"int4_method": "awq", "num_samples": 157, "awq_rows": 1024}),
    # The last decoder layer's MLP (its joined gate/up and down MatMuls, by their names in the fused
    # SmolLM2 graph; `--exclude-node` in compile) kept float: the most sensitive part under INT4.
    "int4 AWQ b128 sym, last MLP float": ("int4", {"int4_method": "awq",
                                                   "exclude_nodes": ("node_linear_207_joined", "node_linear_209")}),
    "int4 AWQ+GPTQ act-order b128 sym, 157 lines": ("int4", {"int4_method": "gptq", "num_samples": 157,
                                                            "awq_rows": 1024, "gptq_act_order": True}),
    # Caveat row: block-32 asymmetric is the GGUF's own grid (Q4_1), so it nearly reproduces the weights.
    "int4 RTN b32 asym (GGUF-like)": ("int4", {"int4_method": "rtn", "int4_block_size": 32, "int4_symmetric": False}),
    "fp8": ("fp8", {}),  # GPTQ-rounded weights, LM head float (the defaults)
    "fp8 nearest": ("fp8", {"weight_rounding": "nearest"}),
    "fp8, fp8 lm_head": ("fp8", {"fp8_lm_head": True}),
    # The gate: the most sensitive MatMuls stay float until top-1 agreement on the calibration
    # text's held-out quarter (what `compile` gives it) reaches 0.99.
    "fp8, target 0.99": ("fp8", {"accuracy_target": 0.99}),
}


def _our_rows(args, work: Path) -> tuple[dict, dict]:
    from dataclasses import replace

    from trtcompile.compile import package_stage
    from trtcompile.export import read_metadata
    from trtcompile.progress import Progress
    from trtcompile.runtime import ort_backend
    from trtcompile.settings import BuildSettings, CalibrationSettings

    progress = Progress(quiet=True)
    fused = _fused_fp32(args.checkpoint, progress)
    meta = read_metadata(fused)
    evaluation = _eval_feeds(meta, args)
    calibration = CalibrationSettings(data=SAMPLES / "calibration.txt", int4_activations="fp32")
    from trtcompile.quantize.step import calibration_feeds

    calibration = replace(calibration, num_samples=64)
    cal_feeds, cal_held_out = calibration_feeds(meta, calibration)
    info = {"eval": evaluation, "eval_tokens": int(sum(f["attention_mask"].sum() for f in evaluation)),
            "accuracy_level": ort_backend.MATMULNBITS_ACCURACY_LEVEL, "tokenizer": meta["source"].get("tokenizer_dir")}
    rows = {}
    for name, (precision, overrides) in VARIANTS.items():
        if args.only and name not in args.only and name != "fp32":
            continue
        if precision == "same":
            if overrides["package_of"] in rows:
                rows[name] = {**rows[overrides["package_of"]], "note": "same package, MatMulNBits accuracy level "
                              f"{overrides['accuracy_level']}", "accuracy_level": overrides["accuracy_level"]}
            continue
        t = time.perf_counter()
        # The quantizer's own gate sees one held-out row (its report), or with a target the
        # calibration text's held-out quarter, as in `compile`; the table is measured below.
        gate_feeds = cal_held_out if overrides.get("accuracy_target") else evaluation[:1]
        overrides = dict(overrides)
        knobs = {k: overrides.pop(k) for k in ("awq_rows", "gptq_act_order") if k in overrides}
        row_cal = replace(calibration, **overrides)
        feeds = cal_feeds
        if row_cal.num_samples != 64:
            feeds, held_out = calibration_feeds(meta, row_cal)
            gate_feeds = held_out if overrides.get("accuracy_target") else gate_feeds
        with _int4_knobs(**knobs):
            model, note = _apply(fused, precision, row_cal, feeds, gate_feeds)
        seconds = time.perf_counter() - t
        out = work / name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        package_stage(model, out, reports=[], warnings=[], build=BuildSettings(), progress=progress)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and f.suffix in (".onnx", ".data"))
        rows[name] = {"package": str(out), "size_mb": size / 2**20, "quantize_s": round(seconds, 1), "note": note}
        del model
        gc.collect()  # each step holds a few ONNX Runtime sessions of the whole model; free them now
        print(f"  prepared {name} in {seconds:.0f}s", file=sys.stderr, flush=True)
    return rows, info


def _fused_fp32(checkpoint: Path, progress):
    """Export + fusion passes of the checkpoint, cached beside it (minutes on a shared 2-core box)."""
    from trtcompile.compile import export_stage
    from trtcompile.onnx_io import load_model, save_model
    from trtcompile.optimize import optimize
    from trtcompile.settings import ExportSettings, OptimizeSettings

    stamp = int((Path(checkpoint) / "config.json").stat().st_mtime)
    cached = Path(checkpoint).parent / f"{Path(checkpoint).name}.fused-fp32-{stamp}-{_code_stamp()}.onnx"
    if cached.is_file():
        return load_model(cached)
    # Perplexity needs every position's logits, and these feeds a concat cache (empty past): ask
    # for both where the export has such settings (a static-cache, last-logits default).
    wanted = {"all_logits": True, "kv_cache": "concat"}
    export = ExportSettings(**{k: v for k, v in wanted.items() if k in ExportSettings.__dataclass_fields__})
    _, raw = export_stage(str(checkpoint), None, export, progress)
    fused = optimize(raw, OptimizeSettings()).model
    tmp = cached.with_suffix(".tmp")
    save_model(fused, tmp)
    tmp.rename(cached)
    return fused


def _code_stamp() -> str:
    """A hash of the code that makes the fused graph (export and passes), so that a cached graph
    is remade when they change (a stale one measured Q/K/V unjoined after the passes joined them)."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*(root / "export").rglob("*.py"), *(root / "passes").rglob("*.py"), root / "optimize.py"]):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:10]


def _apply(fused, precision: str, calibration, cal_feeds, evaluation):
    """The FP32 fused graph in `precision` (the optimize stage's precision step, on one graph)."""
    import onnx_graphsurgeon as gs

    from trtcompile.export import read_metadata, write_metadata
    from trtcompile.onnx_io import to_model
    from trtcompile.passes import ModelInfo, PassContext
    from trtcompile.quantize import quantize_fp8, quantize_int4, quantize_int8

    meta = read_metadata(fused)
    ctx = PassContext(model=ModelInfo.from_config(meta["source"].get("config") or {}))
    if precision == "fp32":
        import onnx

        # A copy: writing the package moves its weights to external data, and the next rows
        # still quantize `fused`.
        out = onnx.ModelProto()
        out.CopyFrom(fused)
        return out, ""
    if precision == "fp16":
        from trtcompile.passes.convert_fp16 import convert_fp16

        out = to_model(convert_fp16(gs.import_onnx(fused), ctx))
    elif precision == "int4":
        out = quantize_int4(fused, cal_feeds, calibration, ctx, evaluation=evaluation)
    elif precision == "int8":
        out = quantize_int8(fused, cal_feeds, calibration, ctx, evaluation=evaluation)
    else:
        out = quantize_fp8(fused, cal_feeds, calibration, ctx, evaluation=evaluation)
    meta["precision"] = precision
    write_metadata(out, meta)
    notes = [n for n in ctx.report.notes if n.startswith(("INT", "FP8", "fallback"))]
    return out, "; ".join(notes[-1:])


def _eval_feeds(meta: dict, args) -> list[dict[str, np.ndarray]]:
    """samples/evaluation.txt as a token stream, cut into rows of --eval-length (prefill, empty past)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(meta["source"]["tokenizer_dir"], local_files_only=True)
    lines = [ln for ln in (SAMPLES / "evaluation.txt").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    stream = [t for ids in tokenizer(lines, add_special_tokens=False)["input_ids"] for t in ids]
    n, length = args.eval_rows, args.eval_length
    if len(stream) < n * length:
        n = max(1, len(stream) // length)
    ids = np.asarray(stream[: n * length], np.int64).reshape(n, length)
    feeds = []
    for row in ids:
        feed = {"input_ids": row[None], "attention_mask": np.ones((1, length), np.int64),
                "position_ids": np.arange(length, dtype=np.int64)[None]}
        for name, shape in meta["shapes"].items():
            if name not in feed:
                dims = [0 if isinstance(d, str) else d for d in shape]
                dims[0] = 1
                feed[name] = np.zeros(dims, np.dtype(meta["dtypes"][name]))
        feeds.append(feed)
    return feeds


def _measure_accuracy(rows: dict, meta: dict) -> None:
    from trtcompile import runtime as rt
    from trtcompile.quantize.accuracy import compare

    feeds = meta["eval"]
    for name, row in rows.items():
        if "logits" not in row:
            with _level(row), rt.load(row["package"], backend="onnxruntime") as model:
                row["logits"] = [model.run(f)["logits"] for f in feeds]
    ref = [[x] for x in rows["fp32"]["logits"]]
    for name, row in rows.items():
        acc = compare(ref, [[x] for x in row["logits"]], feeds, language_model=True)
        row["accuracy"] = {"perplexity": acc["perplexity"], "perplexity_fp32": acc["perplexity_fp32"],
                           "top1": acc["top1_agreement"], "tokens": acc["perplexity_tokens"]}
        row.pop("logits")


class _int4_knobs:
    """quantize/int4.py's module settings for one row (AWQ's sample rows, GPTQ's act-order)."""

    _NAMES = {"awq_rows": "_AWQ_ROWS", "gptq_act_order": "_GPTQ_ACT_ORDER"}

    def __init__(self, **values):
        self.values = {self._NAMES[k]: v for k, v in values.items()}

    def __enter__(self):
        from trtcompile.quantize import int4

        self.saved = {k: getattr(int4, k) for k in self.values}
        for k, v in self.values.items():
            setattr(int4, k, v)

    def __exit__(self, *exc):
        from trtcompile.quantize import int4

        for k, v in self.saved.items():
            setattr(int4, k, v)


class _file_lock:
    def __init__(self, path: Path | None):
        self.path, self.handle = path, None

    def __enter__(self):
        if self.path is not None:
            import fcntl

            self.handle = open(self.path, "a")
            print(f"  waiting for {self.path} to time the rows", file=sys.stderr, flush=True)
            fcntl.flock(self.handle, fcntl.LOCK_EX)

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.close()


class _level:
    """The runtime's MatMulNBits accuracy level for the sessions a row creates."""

    def __init__(self, row: dict):
        self.level = row.get("accuracy_level")

    def __enter__(self):
        from trtcompile.runtime import ort_backend

        self.saved = ort_backend.MATMULNBITS_ACCURACY_LEVEL
        if self.level is not None:
            ort_backend.MATMULNBITS_ACCURACY_LEVEL = self.level

    def __exit__(self, *exc):
        from trtcompile.runtime import ort_backend

        ort_backend.MATMULNBITS_ACCURACY_LEVEL = self.saved


# Copies of each row's session for timing, created in mirrored order (A B C, C B A) and used in
# turn: on this VM an ONNX Runtime session's speed depends on when it was created in the process
# (the first ones 10-30% slower; `trtcompile bench decode --instances`).
SPEED_COPIES = 2


def _measure_speed(rows: dict, args) -> None:
    from trtcompile import runtime as rt

    rng = np.random.default_rng(0)
    prompt = rng.integers(100, 20000, (1, args.prompt_tokens)).astype(np.int64)

    def ours(row):
        def create():
            with _level(row):
                model = rt.load(row["package"], backend="onnxruntime", threads=args.threads, spinning=args.spinning)
            return (lambda: model.stream(prompt, max_new_tokens=args.new_tokens, stop_tokens=[])), model.close
        return create

    factories = {name: row.pop("stream_factory", None) or ours(row) for name, row in rows.items()}
    names, copies = list(rows), {name: [] for name in rows}
    for i in range(SPEED_COPIES):
        for name in (names if i % 2 == 0 else names[::-1]):
            copies[name].append(factories[name]())
    per_token = {n: [] for n in rows}
    ttft = {n: [] for n in rows}
    for name in names:  # warm-up, every copy
        for make, _ in copies[name]:
            for _ in make():
                pass
    for round_ in range(args.rounds):
        for name in names:
            make = copies[name][round_ % SPEED_COPIES][0]
            last = time.perf_counter()
            for i, _ in enumerate(make()):
                now = time.perf_counter()
                (ttft if i == 0 else per_token)[name].append((now - last) * 1e3)
                last = now
    for name, row in rows.items():
        row["ms_per_token"] = float(np.median(per_token[name]))
        row["ttft_ms"] = float(np.median(ttft[name]))
        for _, close in copies[name]:
            close()


# ---------------------------------------------------------------------------------------------
def _genai_row(args, work: Path, meta: dict) -> dict:
    """ONNX Runtime GenAI's int4 build of the same checkpoint: accuracy via ORT, speed via og."""
    out = work / "genai-int4"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(args.checkpoint),
                           "-o", str(out), "-p", "int4", "-e", "cpu", "-c", str(work / "genai-cache")],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"onnxruntime_genai builder failed: {proc.stderr[-2000:]}")
    seconds = time.perf_counter() - t
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file() and f.suffix in (".onnx", ".data"))
    logits = _genai_logits(out, meta["eval"], args.threads)
    _genai_session_options(out, args.threads, args.spinning)
    import onnxruntime_genai as og

    rng = np.random.default_rng(0)
    prompt = rng.integers(100, 20000, (1, args.prompt_tokens)).astype(np.int32)

    def create(huge_pages: bool = False):  # one og.Model (its sessions) and a stream; _measure_speed makes copies
        from trtcompile.runtime.huge_pages import NewMemory

        with NewMemory(enabled=huge_pages):
            model = og.Model(str(out))

        def stream():
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=args.prompt_tokens + args.new_tokens, do_sample=False)
            generator = og.Generator(model, params)
            generator.append_tokens(prompt)
            for _ in range(args.new_tokens):
                if generator.is_done():
                    break
                generator.generate_next_token()
                yield generator.get_next_tokens()

        return stream, (lambda: None)

    ops = _op_counts(out / "model.onnx")
    return {"package": str(out), "size_mb": size / 2**20, "quantize_s": round(seconds, 1), "logits": logits,
            "stream_factory": create, "note": f"builder {seconds:.0f}s; ops {ops}"}


def _genai_session_options(out: Path, threads: int, spinning: bool) -> None:
    """GenAI's sessions with our runtime's thread count and spinning setting: GenAI's defaults
    (all cores, spinning threads) against ours (spinning off) measured the setting, not the engine.
    genai_config.json's session_options take ORT's integer options by name and any other key as an
    ORT session config entry."""
    path = out / "genai_config.json"
    config = json.loads(path.read_text())
    spin = "1" if spinning else "0"
    config["model"]["decoder"]["session_options"].update({
        "intra_op_num_threads": threads, "inter_op_num_threads": 1,
        "session.intra_op.allow_spinning": spin, "session.inter_op.allow_spinning": spin})
    path.write_text(json.dumps(config, indent=4))


def _genai_logits(out: Path, feeds: list[dict], threads: int) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(out / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    config = json.loads((out / "genai_config.json").read_text())["model"]["decoder"]
    kv_heads, head_dim = config["num_key_value_heads"], config["head_size"]
    result = []
    for feed in feeds:
        ids = feed["input_ids"]
        mine = {"input_ids": ids.astype(np.int64), "attention_mask": np.ones_like(ids, np.int64)}
        for name, spec in inputs.items():
            if name in mine:
                continue
            # [batch, kv_heads, past (empty), head_dim]: symbolic dims other than the past length
            # come from the checkpoint's config.
            known = {1: kv_heads, 3: head_dim}
            shape = [ids.shape[0] if i == 0 else (d if isinstance(d, int) else (0 if i == 2 else known.get(i, 0)))
                     for i, d in enumerate(spec.shape)]
            dtype = np.float16 if "float16" in spec.type else np.float32
            mine[name] = np.zeros(shape, dtype) if "past" in name else None
        mine = {k: (v.astype(np.int32) if inputs[k].type == "tensor(int32)" else v) for k, v in mine.items() if v is not None}
        result.append(session.run(["logits"], mine)[0].astype(np.float32))
    return result


def _op_counts(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for n in model.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:6]
    return ", ".join(f"{k} {v}" for k, v in top)


if __name__ == "__main__":
    main()
