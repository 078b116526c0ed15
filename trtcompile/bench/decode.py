"""Where a decode step's time goes: ONNX Runtime's own profiler on a static-cache package, per op.

    trtcompile bench decode PACKAGE [PACKAGE ...] [--contexts 16,2048] [--rows 1] [--steps 20] [--threads 2]
                            [--genai DIR] [--instances 2] [--spin-us 50] [--no-profile]

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

`--genai DIR` adds ONNX Runtime GenAI's model (its model builder's model.onnx: GroupQueryAttention,
SkipSimplifiedLayerNormalization, ...) as a column, run by this same ONNX Runtime with the same
session options, its cache bound in place as GenAI binds it (past_present_share_buffer): the graphs
side by side, op type by op type, with the runtimes' loops left out.

`--instances N` makes N sessions per column, created in turn across the columns (the order reversed
every other round, so with an even N every column's sessions sit at the same mean creation position),
and reports their mean. On the 2-core VM this was written on, an ORT session's speed depended on when it was created in
the process: of 4 identical SmolLM2 sessions stepped in random order the first-created was 10-30%
slower, every run (its prepacked weights' memory; the effect vanished with prepacking off, where all
sessions read the same mapped file). One session per column measures that placement, not the graph.
Page walks, it seems: with the weights on 2 MiB pages (runtime/huge_pages.py, what the runtime and this
bench do by default; `--huge-pages off|both` to compare) identical sessions ran 2-15% apart, against
20-60% on 4 KiB pages (an LM-head MatMul alone, four sessions in one process).
ORT's profiler adds a few microseconds to every kernel (a Reshape that moves no data shows ~5 us),
which is much of what the small ops show: `--no-profile` times the steps without it.
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


def _session(model: Path, threads: int, profile_prefix: str | None, spinning, huge_pages: bool = True):
    import onnxruntime as ort

    from trtcompile.runtime.huge_pages import NewMemory
    from trtcompile.runtime.ort_backend import DEFAULT_SPIN_US, session_options

    opts = session_options(threads=threads, spinning=DEFAULT_SPIN_US if spinning is None else spinning)
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    with NewMemory(enabled=huge_pages):  # as the runtime's backend does
        return ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])


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


class _Timed:
    """A session stepped by profile_cells: wall and process CPU time per step, then the profile."""

    session = None

    def step(self) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        self._run()
        self.walls.append((time.perf_counter() - start) * 1e3)
        self.cpus.append((time.process_time() - cpu) * 1e3)

    def close(self) -> None:
        pass

    def result(self, warmup: int) -> dict:
        timing = {"wall_ms": float(np.median(self.walls[warmup:])), "cpu_ms": float(np.median(self.cpus[warmup:])),
                  "kv_len": self.kv_len}
        if not self.profiled:
            self.close()
            return {**timing, "run_ms": float("nan"), "ops": {}, "nodes": {}, "kernels": float("nan")}
        trace = json.loads(Path(self.session.end_profiling()).read_text())
        self.close()
        runs = [e for e in trace if e.get("cat") == "Session" and e.get("name") == "model_run"][warmup:]
        kernels = [e for e in trace if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
        ops, nodes, counts = collections.defaultdict(list), collections.defaultdict(list), []
        for run in runs:
            lo, hi = run["ts"], run["ts"] + run["dur"]
            by_op, by_node = collections.Counter(), collections.Counter()
            counts.append(0)
            for e in kernels:
                if lo <= e["ts"] <= hi:
                    by_op[e["args"].get("op_name", "?")] += e["dur"] / 1e3
                    by_node[_node_kind(e)] += e["dur"] / 1e3
                    counts[-1] += 1
            for op, ms in by_op.items():
                ops[op].append(ms)
            for node, ms in by_node.items():
                nodes[node].append(ms)
        # Medians per op over the steps: a step preempted by another process inflates one op, not the table.
        return {**timing, "run_ms": float(np.median([r["dur"] / 1e3 for r in runs])),
                "ops": {op: float(np.median(v)) for op, v in ops.items()},
                "nodes": {n: float(np.median(v)) for n, v in nodes.items()}, "kernels": float(np.median(counts))}


class Cell(_Timed):
    """One (package, context, kv_len): its own session, cache and trace file."""

    def __init__(self, package: Path, context: int, rows: int, threads: int, kv_len: int | None, tmp: str | None,
                 spinning=None, huge_pages: bool = True):
        self.package, self.context, self.profiled = package, context, tmp is not None
        self.session = _session(package / "model.onnx", threads, tmp and os.path.join(tmp, f"decode-{id(self)}"),
                                spinning, huge_pages)
        self.cache, _ = _cache(package, self.session, rows)
        self.kv_len = kv_len or self.cache.kv_length(context + 1)  # what the scheduler would read
        self.ids = np.full((rows, 1), 42, np.int64)
        self.write = np.full(rows, context, np.int64)
        self.walls: list[float] = []
        self.cpus: list[float] = []

    def _run(self) -> None:
        self.cache.run(0, self.ids, self.write[:, None].copy(), self.write, self.kv_len)

    def close(self) -> None:
        self.cache.close()


class GenAICell(_Timed):
    """ONNX Runtime GenAI's decoder graph (its model builder's output) in this ONNX Runtime, with the
    same session options as ours: one decode step at `context`, its cache bound in place the way GenAI
    binds it when genai_config.json says past_present_share_buffer (a buffer per layer, past and present
    on one address), the mask `context + 1` long. The graph's kernels, not GenAI's own loop."""

    def __init__(self, directory: Path, context: int, rows: int, threads: int, tmp: str | None, spinning=None,
                 huge_pages: bool = True):
        config = json.loads((directory / "genai_config.json").read_text())["model"]
        decoder = config["decoder"]
        self.context, self.profiled, self.kv_len = context, tmp is not None, context + 1
        self.session = _session(directory / decoder["filename"], threads,
                                tmp and os.path.join(tmp, f"genai-{id(self)}"), spinning, huge_pages)
        names, outputs = decoder["inputs"], decoder["outputs"]
        inputs = {i.name: i for i in self.session.get_inputs()}
        dtype = np.float16 if "float16" in inputs[names["past_key_names"] % 0].type else np.float32
        shape = [rows, decoder["num_key_value_heads"], context + 1, decoder["head_size"]]
        self.binding = self.session.io_binding()
        rng = np.random.default_rng(0)
        self.buffers = []  # kept alive: the binding holds their addresses
        for layer in range(decoder["num_hidden_layers"]):
            for past, present in (("past_key_names", "present_key_names"), ("past_value_names", "present_value_names")):
                buf = rng.standard_normal(shape, np.float32).astype(dtype)
                self.buffers.append(buf)
                self.binding.bind_input(names[past] % layer, "cpu", 0, dtype, shape, buf.ctypes.data)
                self.binding.bind_output(outputs[present] % layer, "cpu", 0, dtype, shape, buf.ctypes.data)
        self.logits = np.empty((rows, 1, config["vocab_size"]), np.float32)
        self.binding.bind_output(outputs["logits"], "cpu", 0, self.logits.dtype, list(self.logits.shape),
                                 self.logits.ctypes.data)
        self.feeds = {names["input_ids"]: np.full((rows, 1), 42, np.int64),
                      names["attention_mask"]: np.ones((rows, context + 1), np.int64)}
        self.walls: list[float] = []
        self.cpus: list[float] = []

    def _run(self) -> None:
        for name, value in self.feeds.items():
            self.binding.bind_cpu_input(name, value)
        self.session.run_with_iobinding(self.binding)


def profile_cells(cells: list[tuple], rows: int, steps: int, threads: int, *,
                  instances: int = 1, profile: bool = True, spinning=None, genai: Path | None = None) -> list[dict]:
    """Profile decode steps of every (package, context, kv_len[, huge_pages]) cell, one step of each in turn, so
    load drift on a shared machine hits every cell alike; per-op medians per cell, averaged over
    `instances` sessions per cell (created in turn across the cells). A cell whose package is the
    string "genai" runs the GenAI model in `genai`."""
    warmup = 3
    with tempfile.TemporaryDirectory() as tmp:
        trace_dir = tmp if profile else None
        live: list[list[_Timed]] = [[] for _ in cells]
        for round_ in range(instances):
            # In turn, the order reversed every other round (A B, B A, ...): with an even count every
            # cell's sessions have the same mean creation position, so none owns the earlier (slower) ones.
            turn = list(zip(live, cells))
            for group, (package, context, kv_len, *pages) in (turn[::-1] if round_ % 2 else turn):
                huge = pages[0] if pages else True  # the runtime's default
                group.append(GenAICell(genai, context, rows, threads, trace_dir, spinning, huge) if package == "genai"
                             else Cell(package, context, rows, threads, kv_len, trace_dir, spinning, huge))
        flat = [cell for group in live for cell in group]
        order = np.random.default_rng(0)
        for _ in range(steps + warmup):
            # A new order every round: no cell always runs first or after the same neighbour (a long-
            # context step leaves the CPU caches full of its KV cache, not of the next cell's weights).
            for i in order.permutation(len(flat)):
                flat[i].step()
        return [_mean_of([cell.result(warmup) for cell in group]) for group in live]


def _mean_of(results: list[dict]) -> dict:
    """One cell's figures over its instances: the mean of each instance's medians."""
    mean = {key: float(np.mean([r[key] for r in results])) for key in ("wall_ms", "cpu_ms", "run_ms", "kernels")}
    for key in ("ops", "nodes"):
        names = {n for r in results for n in r[key]}
        mean[key] = {n: float(np.mean([r[key].get(n, 0.0) for r in results])) for n in names}
    return {**mean, "kv_len": results[0]["kv_len"], "instances": results}


def _source_name(package, huge: bool, both: bool) -> str:
    name = getattr(package, "name", package)
    return f"{name} {'2M' if huge else '4K'} pages" if both else name


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
    parser.add_argument("--genai", type=Path, help="an ONNX Runtime GenAI model directory: its graph as a column")
    parser.add_argument("--instances", type=int, default=1,
                        help="sessions per column, created in turn, averaged; even numbers balance the creation order "
                             "(see the module docstring)")
    parser.add_argument("--spin-us", type=int, help="ORT spin-wait in microseconds, 0 = none (default: the runtime's)")
    parser.add_argument("--no-profile", action="store_true", help="time the steps without ORT's profiler")
    parser.add_argument("--huge-pages", choices=["on", "off", "both"], default="on",
                        help="weights on transparent huge pages as the runtime puts them (on), on 4 KiB "
                             "pages (off), or each column both ways (runtime/huge_pages.py)")
    args = parser.parse_args(argv)
    if args.genai and not (args.genai / "genai_config.json").is_file():
        raise SystemExit(f"--genai {args.genai}: no genai_config.json there; give the directory ONNX Runtime GenAI's "
                         f"model builder wrote (`trtcompile bench generate` makes one under its --work directory)")
    if args.instances < 1:
        raise SystemExit(f"--instances {args.instances}: give 1 or more sessions per column")
    contexts = [c for c in args.contexts.split(",")]
    sources = [*args.packages, *(["genai"] if args.genai else [])]
    pages = {"on": [True], "off": [False], "both": [True, False]}[args.huge_pages]
    cells, keys = [], []
    for cell in contexts:
        context, _, kv_len = cell.partition(":")
        for package in sources:
            for huge in pages:
                cells.append((package, int(context), int(kv_len) if kv_len else args.kv_len, huge))
                keys.append((_source_name(package, huge, len(pages) > 1), cell))
    spinning = None if args.spin_us is None else (args.spin_us if args.spin_us > 0 else False)
    results = dict(zip(keys, profile_cells(cells, args.rows, args.steps, args.threads, instances=args.instances,
                                           profile=not args.no_profile, spinning=spinning, genai=args.genai)))
    columns = [f"{name} ctx {c}" for name, c in keys]
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
    rows.append(["kernels per step", *(results[k]["kernels"] for k in keys)])
    if args.instances > 1:  # each session's own step wall, to show the spread between identical sessions
        rows.append(["step wall per session", *(" ".join(f"{r['wall_ms']:.1f}" for r in results[k]["instances"])
                                                for k in keys)])
    print_table(f"Decode step, ms per step by op type ({'no profiler' if args.no_profile else 'ORT profiler'}; "
                f"{args.rows} row(s), {args.threads} threads, median of {args.steps} steps, mean of "
                f"{args.instances} session(s) per column)", ["op", *columns], rows,
                note="kernel times from ORT's profiler (a few us of its own per kernel); shared machine: compare "
                     "columns of one run")
    if args.nodes:
        kinds = sorted({n for r in results.values() for n in r["nodes"]},
                       key=lambda n: -max(r["nodes"].get(n, 0.0) for r in results.values()))[: args.nodes]
        print_table("Costliest node kinds (layers summed), ms per step", ["node", *columns],
                    [[n, *(results[k]["nodes"].get(n, 0.0) for k in keys)] for n in kinds])


if __name__ == "__main__":
    main()
