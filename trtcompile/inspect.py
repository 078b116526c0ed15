"""`trtcompile inspect`: what a package (or an ONNX file from a stage) contains, as text."""

from __future__ import annotations

import json
from pathlib import Path


def describe(target: Path, *, as_json: bool = False, show_passes: bool = False) -> str:
    if target.is_file() and target.suffix == ".onnx":
        return _describe_onnx(target)
    from trtcompile.runtime.manifest import read_manifest

    manifest = read_manifest(target, check_files=False)
    data = manifest.data
    if as_json:
        return json.dumps(data, indent=2)
    lines = [f"package {target}  (trtcompile {data.get('trtcompile_version')}, {data.get('created')})",
             f"model     {data['model']['name']}  [{data['model']['task']}]  from {data['model']['source']}",
             f"precision {data['precision']}", "", "inputs"]
    for t in data["inputs"]:
        rng = f"  values in [{t['value_range'][0]}, {t['value_range'][1]})" if t.get("value_range") else ""
        lines.append(f"  {t['name']:<28} {t['dtype']:<8} {t['shape']}{rng}")
    lines.append("outputs")
    for t in data["outputs"]:
        lines.append(f"  {t['name']:<28} {t['dtype']:<8} {t['shape']}")
    lines += ["", f"buckets   (profile: {data['profile'].get('origin')})"]
    for b in data["buckets"]:
        lines.append(f"  {b['name']:<12} " + "  ".join(f"{d} {lo}..{hi} (opt {opt})"
                                                    for d, (lo, opt, hi) in b["dims"].items()))
    lines += ["", "engines"]
    if not data.get("engines"):
        lines.append(f"  none: {data['build'].get('engines_skipped', 'not built')}")
    for e in data.get("engines", []):
        lines.append(f"  {e['bucket']:<12} {e['file']}  TensorRT {e.get('tensorrt_version')}  "
                     f"sm {e.get('compute_capability')}  {e.get('bytes', 0) / 2**20:.1f} MiB  "
                     f"{e.get('build_seconds', 0):.1f} s")
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
    timings = data.get("build", {}).get("timings_s", {})
    if timings:
        lines += ["", "timings   " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())]
    return "\n".join(lines)


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
    return "\n".join(lines)
