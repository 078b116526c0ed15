"""Where a decode step's time goes: ONNX Runtime's own profiler on a static-cache package, per op.

    trtcompile bench decode PACKAGE [PACKAGE ...] [--contexts 16,2048] [--rows 1] [--steps 20] [--threads 2]

For each package and context, the cache rows are filled up to that context, then `--steps` decode
steps run exactly as the runtime runs them (runtime/static_cache.py: IOBinding, the cache bound in
place, the kv_len the scheduler picks) inside a session with ORT's profiler on. The table gives
each op type's kernel time per step (median over the steps), so a cost that grows with the context
(the cache read: Slice, Cast, Attention) shows next to one that does not (MatMul over the weights).
The wall-clock time of a whole step (host work, IOBinding, the thread pool) is beside it: the gap
between that and the kernels' sum is what the graph and the runtime spend outside kernels. The
step's process CPU time is too: on a loaded machine it leaves out the time a step waited for a
core (with --threads 1 it is the cleanest figure there). Cells
(package x context) run one step each in turn, in one process, so a shared machine's load drift
hits them alike, in a new order each round, so that no cell always runs first or after the same
neighbour.
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


class Cell:
    """One (package, context, kv_len) under the profiler: its own session, cache and trace file."""

    def __init__(self, package: Path, context: int, rows: int, threads: int, kv_len: int | None, tmp: str):
        from trtcompile.runtime.static_cache import kv_length

        self.package, self.context = package, context
        self.session = _session(package, threads, os.path.join(tmp, f"decode-{id(self)}"))
        self.cache, _ = _cache(package, self.session, rows)
        self.kv_len = kv_len or kv_length(context + 1, self.cache.max_cache, self.cache.dtype.itemsize)
        self.ids = np.full((rows, 1), 42, np.int64)
        self.write = np.full(rows, context, np.int64)
        self.walls: list[float] = []
        self.cpus: list[float] = []

    def step(self) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        self.cache.run(0, self.ids, self.write[:, None].copy(), self.write, self.kv_len)
        self.walls.append((time.perf_counter() - start) * 1e3)
        self.cpus.append((time.process_time() - cpu) * 1e3)

    def result(self, warmup: int) -> dict:
        trace = json.loads(Path(self.session.end_profiling()).read_text())
        self.cache.close()
        runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"][warmup:]
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
        return {"wall_ms": float(np.median(self.walls[warmup:])), "cpu_ms": float(np.median(self.cpus[warmup:])),
                "run_ms": float(np.median([r["dur"] / 1e3 for r in runs])),
                "ops": {op: float(np.median(v)) for op, v in ops.items()},
                "nodes": {n: float(np.median(v)) for n, v in nodes.items()}, "kv_len": self.kv_len}


def profile_cells(cells: list[tuple[Path, int, int | None]], rows: int, steps: int, threads: int) -> list[dict]:
    """Profile decode steps of every (package, context, kv_len) cell, one step of each in turn, so
    load drift on a shared machine hits every cell alike; per-op medians per cell."""
    warmup = 3
    with tempfile.TemporaryDirectory() as tmp:
        live = [Cell(package, context, rows, threads, kv_len, tmp) for package, context, kv_len in cells]
        order = np.random.default_rng(0)
        for _ in range(steps + warmup):
            # A new order every round: no cell always runs first or after the same neighbour (a long-
            # context step leaves the CPU caches full of its KV cache, not of the next cell's weights).
            for i in order.permutation(len(live)):
                live[i].step()
        return [cell.result(warmup) for cell in live]


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
    parser.add_argument("--contexts", default="16,2048",
                        help="contexts; CONTEXT:KV_LEN reads KV_LEN slots instead of what the scheduler picks")
    parser.add_argument("--rows", type=int, default=1, help="rows decoded together (continuous batching)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--kv-len", type=int, help="read this many cache slots (default: what the scheduler picks)")
    parser.add_argument("--nodes", type=int, default=0, help="also list the N costliest node kinds")
    args = parser.parse_args(argv)
    contexts = [c for c in args.contexts.split(",")]
    cells, keys = [], []
    for cell in contexts:
        context, _, kv_len = cell.partition(":")
        for package in args.packages:
            cells.append((package, int(context), int(kv_len) if kv_len else args.kv_len))
            keys.append((package.name, cell))
    results = dict(zip(keys, profile_cells(cells, args.rows, args.steps, args.threads)))
    columns = [f"{p} ctx {c}" for c in contexts for p in (pk.name for pk in args.packages)]
    op_types = sorted({op for r in results.values() for op in r["ops"]},
                      key=lambda op: -max(r["ops"].get(op, 0.0) for r in results.values()))
    rows = [[op, *(results[k]["ops"].get(op, 0.0) for k in keys)] for op in op_types]
    # An If's time holds its branch's nodes, which the profiler also lists: count them once.
    rows.append(["sum of kernels", *(sum(v for op, v in results[k]["ops"].items() if op != "If") for k in keys)])
    rows.append(["session run", *(results[k]["run_ms"] for k in keys)])
    rows.append(["step wall", *(results[k]["wall_ms"] for k in keys)])
    # CPU time of the whole process over the step (all ORT threads; no spinning): on a loaded machine
    # the wall clock counts time the step waited for a core, this does not.
    rows.append(["step CPU", *(results[k]["cpu_ms"] for k in keys)])
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
