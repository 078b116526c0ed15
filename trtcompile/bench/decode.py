"""Where a decode step's time goes: ONNX Runtime's own profiler on a static-cache package, per op.

    trtcompile bench decode PACKAGE [PACKAGE ...] [--contexts 16,2048] [--rows 1] [--steps 20] [--threads 2]

For each package and context, the cache rows are filled up to that context, then `--steps` decode
steps run exactly as the runtime runs them (runtime/static_cache.py: IOBinding, the cache bound in
place, the bucket of kv_len the scheduler picks) inside a session with ORT's profiler on. The table
sums each op type's kernel time per step (median step), so a cost that grows with the context
(the cache read: Slice, Cast, Attention) shows next to one that does not (MatMul over the weights).
The wall-clock time of a whole step (host work, IOBinding, the thread pool) is beside it: the gap
between that and the kernels' sum is what the graph and the runtime spend outside kernels.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from trtcompile.bench.common import print_table


def _session(package: Path, threads: int, profile_prefix: str | None):
    import onnxruntime as ort

    from trtcompile.runtime.ort_backend import session_options

    opts = session_options(threads=threads)
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(package / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def _cache(package: Path, session, rows: int):
    from types import SimpleNamespace

    from trtcompile.runtime.generate import DecoderLayout
    from trtcompile.runtime.manifest import read_manifest
    from trtcompile.runtime.static_cache import OrtStaticCache

    manifest = read_manifest(package, check_files=False)  # the graph may be an edited variant
    layout = DecoderLayout.of(SimpleNamespace(manifest=manifest))
    specs = {s.name: s for s in manifest.inputs}
    logits = next(s for s in manifest.outputs if s.name == layout.logits)
    dtype = np.dtype(specs[layout.past_inputs[0]].dtype)
    cache = OrtStaticCache(session, layout, rows, dtype, int(logits.shape[-1]), np.dtype(logits.dtype))
    rng = np.random.default_rng(0)
    for buf in cache.buffers:  # plausible K/V magnitudes; the values do not change the work
        buf[...] = rng.standard_normal(buf.shape, np.float32).astype(buf.dtype)
    return cache, layout


def _step_wall(package: Path, context: int, rows: int, steps: int, threads: int, kv_len: int) -> float:
    """Median wall ms of a decode step without the profiler (which adds its own time per node)."""
    session = _session(package, threads, None)
    cache, _ = _cache(package, session, rows)
    ids, write = np.full((rows, 1), 42, np.int64), np.full(rows, context, np.int64)
    walls = []
    for _ in range(steps + 3):
        start = time.perf_counter()
        cache.run(0, ids, write[:, None].copy(), write, kv_len)
        walls.append((time.perf_counter() - start) * 1e3)
    cache.close()
    return float(np.median(walls[3:]))


def profile_steps(package: Path, context: int, rows: int, steps: int, threads: int, kv_len: int | None = None) -> dict:
    """Run `steps` decode steps at `context` with the profiler on; per-op-type ms per step, wall ms."""
    from trtcompile.runtime.static_cache import kv_length

    kv_len = kv_len or kv_length(context + 1, _max_cache(package))
    wall = _step_wall(package, context, rows, steps, threads, kv_len)
    with tempfile.TemporaryDirectory() as tmp:
        session = _session(package, threads, os.path.join(tmp, "decode"))
        cache, layout = _cache(package, session, rows)
        ids = np.full((rows, 1), 42, np.int64)
        write = np.full(rows, context, np.int64)
        for step in range(steps + 3):
            cache.run(0, ids, write[:, None].copy(), write, kv_len)
        trace = json.loads(Path(session.end_profiling()).read_text())
        cache.close()
    runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs = runs[3:]  # warm-up
    kernels = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    ops, nodes = collections.defaultdict(list), collections.defaultdict(list)
    for run in runs:
        lo, hi = run["ts"], run["ts"] + run["dur"]
        by_op, by_node = collections.Counter(), collections.Counter()
        for e in kernels:
            if lo <= e["ts"] <= hi:
                by_op[e["args"].get("op_name", "?")] += e["dur"] / 1e3
                by_node[_node_kind(e)] += e["dur"] / 1e3
        for op, ms in by_op.items():
            ops[op].append(ms)
        for node, ms in by_node.items():
            nodes[node].append(ms)
    # Medians per op over the steps: a step preempted by another process inflates one op, not the table.
    return {"wall_ms": wall, "run_ms": float(np.median([r["dur"] / 1e3 for r in runs])),
            "ops": {op: float(np.median(v)) for op, v in ops.items()},
            "nodes": {n: float(np.median(v)) for n, v in nodes.items()}, "kv_len": kv_len}


def _max_cache(package: Path) -> int:
    return int(json.loads((package / "manifest.json").read_text())["generation"]["max_cache"])


def _node_kind(event: dict) -> str:
    """A node's name with its layer numbers dropped (node_slice_13 and node_slice_15 are one kind),
    plus its op type, so a per-layer op sums over the layers."""
    import re

    name = event["name"][: -len("_kernel_time")]
    return f"{event['args'].get('op_name', '?')}: {re.sub(r'_[0-9]+$', '', re.sub(r'[0-9]+', '#', name))}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="trtcompile bench decode", description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+", type=Path, help="static-cache packages")
    parser.add_argument("--contexts", default="16,2048")
    parser.add_argument("--rows", type=int, default=1, help="rows decoded together (continuous batching)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv-len", type=int, help="read this many cache slots (default: what the scheduler picks)")
    parser.add_argument("--nodes", type=int, default=0, help="also list the N costliest node kinds")
    args = parser.parse_args(argv)
    contexts = [int(c) for c in args.contexts.split(",")]
    results = {}
    for context in contexts:  # packages alternate within a context, so load drift hits them alike
        for package in args.packages:
            results[(package.name, context)] = profile_steps(package, context, args.rows, args.steps, args.threads,
                                                                   args.kv_len)
    columns = [f"{p} ctx {c}" for c in contexts for p in (pk.name for pk in args.packages)]
    keys = [(p.name, c) for c in contexts for p in args.packages]
    op_types = sorted({op for r in results.values() for op in r["ops"]},
                      key=lambda op: -max(r["ops"].get(op, 0.0) for r in results.values()))
    rows = [[op, *(results[k]["ops"].get(op, 0.0) for k in keys)] for op in op_types]
    rows.append(["sum of kernels", *(sum(results[k]["ops"].values()) for k in keys)])
    rows.append(["session run", *(results[k]["run_ms"] for k in keys)])
    rows.append(["step wall, profiler off", *(results[k]["wall_ms"] for k in keys)])
    rows.append(["kv_len read", *(results[k]["kv_len"] for k in keys)])
    print_table(f"Decode step, ms per step by op type (ORT profiler; {args.rows} row(s), {args.threads} threads, "
                f"median of {args.steps} steps)", ["op", *columns], rows,
                note="kernel times from ORT's profiler; shared machine: compare columns of one run")
    if args.nodes:
        kinds = sorted({n for r in results.values() for n in r["nodes"]},
                       key=lambda n: -max(r["nodes"].get(n, 0.0) for r in results.values()))[: args.nodes]
        print_table("Costliest node kinds (layers summed), ms per step", ["node", *columns],
                    [[n, *(results[k]["nodes"].get(n, 0.0) for k in keys)] for n in kinds])


if __name__ == "__main__":
    main()
