"""`trtcompile inspect`: what a package (or an ONNX file from a stage) contains, as text."""

from __future__ import annotations

import json
from pathlib import Path


def describe(target: Path, *, as_json: bool = False, show_passes: bool = False) -> str:
    if target.is_file() and target.suffix == ".onnx":
        return _describe_onnx(target)
    from trtcompile.runtime.manifest import read_manifest

    manifest = read_manifest(target, check_files=False)  # validated against the one schema
    data, model = manifest.data, manifest.schema.model
    if as_json:
        return json.dumps(data, indent=2)
    lines = [f"package {target}  (trtcompile {data.get('trtcompile_version')}, {data.get('created')})",
             f"model     {model.name}  [{model.task}]  from {model.source}",
             f"precision {manifest.precision}", "", "inputs"]
    for t in manifest.inputs:
        rng = f"  values in [{t.value_range[0]}, {t.value_range[1]})" if t.value_range else ""
        lines.append(f"  {t.name:<28} {t.dtype:<8} {t.shape}{rng}")
    lines.append("outputs")
    for t in manifest.outputs:
        lines.append(f"  {t.name:<28} {t.dtype:<8} {t.shape}")
    lines += ["", f"buckets   (profile: {(data.get('profile') or {}).get('origin')})"]
    for b in manifest.buckets:
        lines.append(f"  {b.name:<12} " + "  ".join(f"{d} {lo}..{hi} (opt {opt})"
                                                  for d, (lo, opt, hi) in b.dims.items()))
    lines += ["", "engines"]
    if not data.get("engines"):
        lines.append(f"  none: {(data.get('build') or {}).get('engines_skipped') or 'not built'}")
        check = (data.get("build") or {}).get("tensorrt_import_check")
        if check is not None:  # the graph TensorRT would get, against its documented rules (build/tensorrt_rules.py)
            lines.append(f"  TensorRT import check: {'passed' if not check else f'{len(check)} problem(s)'}")
            lines += [f"    {problem}" for problem in check]
        elif (target / manifest.data.get("model_file", "model.onnx")).is_file():  # compiled before the check
            lines += [f"  {line}" for line in _import_check_lines(target / manifest.data.get("model_file", "model.onnx"))]
    for e in data.get("engines", []):
        flags = e.get("build_flags", {})
        served = ", ".join(f"{p['bucket']} (profile {p['index']})" for p in _profiles(e))
        runtime = "version-compatible (lean or full runtime)" if flags.get("version_compatible") else "full runtime only"
        lines.append(f"  {e['file']}  TensorRT {e.get('tensorrt_version')}  sm {e.get('compute_capability')}  "
                     f"{e.get('bytes', 0) / 2**20:.1f} MiB  {e.get('build_seconds', 0):.1f} s  {runtime}")
        lines.append(f"      buckets: {served}")
    lines += _memory_lines(manifest)
    lines += ["", "passes"]
    for p in data.get("passes", []):
        lines.append(f"  {p['name']:<22} matched {p['matched']:>3}  declined {p['declined']:>3}  "
                     f"{p['seconds'] * 1e3:8.1f} ms  nodes {p['nodes_before']} -> {p['nodes_after']}")
        if show_passes:
            lines += [f"      + {m['node']}  {_kv(m)}" for m in p.get("matches", [])]
            lines += [f"      - {d['node']}: {d['reason']}" for d in p.get("declines", [])]
            lines += [f"      · {n}" for n in p.get("notes", [])]
    for w in data.get("warnings", []):
        lines.append(f"  warning: {w}")
    lines += ["", "ops       " + ", ".join(f"{op} {n}" for op, n in data.get("op_histogram", {}).items())]
    acc = data.get("accuracy")
    if acc:
        lines += ["", f"accuracy  vs reference on {len(acc['cases'])} shapes ({acc['backend']}, {acc['rule']})"]
        for name, w in acc["worst"].items():
            lines.append(f"  {name:<28} max abs {w['max_abs']:.3g}  min cosine {w['min_cosine']:.6f}")
        for case in acc["cases"]:
            if isinstance(case, dict) and case.get("checked"):
                lines.append(f"  {case.get('bucket')} {case.get('dims')}: {case['checked']}")
    timings = (data.get("build") or {}).get("timings_s") or {}
    if timings:
        peaks = data.get("build", {}).get("peak_rss_mib")
        # Informational (not in the schema): a damaged value is shown as absent, never a crash.
        peaks = {k: v for k, v in peaks.items() if isinstance(v, (int, float))} if isinstance(peaks, dict) else {}
        lines += ["", "timings   " + ", ".join(f"{k} {v:.1f} s" + (f" ({peaks[k] / 1024:.2f} GiB peak)" if k in peaks else "")
                                           for k, v in timings.items())]
    return "\n".join(lines)


def _profiles(entry: dict) -> list[dict]:
    from trtcompile.runtime.engine_layout import profiles_of

    try:
        return profiles_of(entry)
    except Exception:  # noqa: BLE001 - inspect shows what it can of a damaged manifest
        return []


def _mib(n: int | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _memory_lines(manifest) -> list[str]:
    """Device and pinned memory per bucket as the TensorRT backend allocates it (runtime/buffers.py)."""
    from trtcompile.runtime.buffers import memory_report

    try:
        rows, weights = memory_report(manifest)
    except Exception as exc:  # noqa: BLE001
        return ["", f"memory    not computable: {exc}"]
    lines = ["", "memory    per bucket on the TensorRT backend (I/O at the bucket's max; K/V stays on the device)"]
    for r in rows:
        resident = f"  K/V {_mib(r.resident_bytes)} only if run() is fed the cache" if r.resident_bytes else ""
        context = f"  activations {_mib(r.context_bytes)}" if r.engine_file else ""
        lines.append(f"  {r.bucket:<12} device I/O {_mib(r.device_io_bytes)}  pinned {_mib(r.pinned_bytes)}"
                     f"{context}{resident}")
    for file, size in weights.items():
        lines.append(f"  weights   {file} {_mib(size)}, once however many buckets it serves")
    return lines


def _kv(d: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in d.items() if k != "node")


def _describe_onnx(path: Path) -> str:
    from trtcompile.onnx_io import load_model, op_histogram, opset_of

    model = load_model(path, load_weights=False)
    lines = [f"onnx {path}  opset {opset_of(model)}  ir {model.ir_version}  nodes {len(model.graph.node)}"]
    for v in model.graph.input:
        lines.append(f"  in  {v.name}: {[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}")
    for v in model.graph.output:
        lines.append(f"  out {v.name}: {[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]}")
    lines.append("ops  " + ", ".join(f"{op} {n}" for op, n in op_histogram(model).items()))
    from trtcompile.stage import has_stage, read_stage

    if has_stage(model):  # a stage file: what the next stage will take from it
        stage = read_stage(model, str(path))
        lines += [f"stage {stage.stage} (precision {stage.precision}) of {stage.source.name} "
                  f"[{stage.source.task}] from {stage.source.spec}",
                  f"profile {stage.profile.origin}: " + "; ".join(
                      f"{b.name} " + ", ".join(f"{d} {lo}..{hi}" for d, (lo, _, hi) in b.dims.items())
                      for b in stage.profile.buckets)]
        if stage.passes:
            lines.append("passes " + ", ".join(f"{p.get('name')} {p.get('matched')}" for p in stage.passes))
        if stage.timings:
            lines.append("timings " + ", ".join(f"{k} {v:.1f} s" for k, v in stage.timings.items()))
    lines += _import_check_lines(path)
    return "\n".join(lines)


def _import_check_lines(path: Path) -> list[str]:
    """The graph TensorRT would get from `path`, against its documented rules (build/tensorrt_rules.py)."""
    from trtcompile.build.tensorrt_graph import import_check

    try:
        problems = import_check(path)
    except Exception as exc:  # advisory: inspect still shows everything else
        return [f"TensorRT import check could not run: {type(exc).__name__}: {exc}"]
    return [f"TensorRT import check: {'passed' if not problems else f'{len(problems)} problem(s)'}",
            *(f"  {problem}" for problem in problems)]
