"""Compare a package against the original model on inputs drawn from each bucket.

The reference is PyTorch for torch sources and the original ONNX file for ONNX sources. Per bucket
two shapes are checked (the bucket's opt and max), so every bucket and both ends of the dynamic
range are covered. The errors are scaled: max abs error <= atol * max(1, max |reference|), so
large-magnitude outputs (LM logits) are held to a relative bound and small ones to an absolute one.
"""

from __future__ import annotations

import numpy as np

from trtcompile.runtime.shapes import Bucket, TensorSpec

# Verification stays affordable on CPU: shapes above this many elements per input are shrunk.
MAX_VERIFY_ELEMENTS = 1 << 14


def make_feeds(inputs: list[TensorSpec], dims: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of the given dimension values that look like what a model gets (ids in range, masks
    with right padding, positions counting up)."""
    from trtcompile.runtime.shapes import eval_dim

    shapes = {s.name: tuple(eval_dim(d, dims) for d in s.shape) for s in inputs}
    feeds = {}
    for spec in inputs:
        shape, dtype = shapes[spec.name], np.dtype(spec.dtype)
        if spec.name == "attention_mask" and len(shape) == 2:
            mask = np.ones(shape, dtype)
            for row in range(1, shape[0]):  # right padding, a different length per row
                mask[row, max(1, shape[1] - row * max(1, shape[1] // 4)):] = 0
            feeds[spec.name] = mask
        elif spec.name == "position_ids" and len(shape) == 2:
            total = shapes.get("attention_mask", shape)[-1]
            feeds[spec.name] = np.broadcast_to(np.arange(total - shape[1], total, dtype=dtype), shape).copy()
        elif dtype == np.bool_:
            feeds[spec.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            low, high = spec.value_range or (0, 2)
            feeds[spec.name] = rng.integers(int(low), int(high), size=shape, dtype=dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def cases_for(buckets: list[Bucket]) -> list[tuple[str, dict[str, int]]]:
    """(bucket, dimension values) at each bucket's opt and max, shrunk to stay cheap, deduplicated."""
    seen, cases = set(), []
    for bucket in buckets:
        for which in (1, 2):
            dims = {d: r[which] for d, r in bucket.dims.items()}
            while np.prod([max(v, 1) for v in dims.values()]) > MAX_VERIFY_ELEMENTS:
                largest = max(dims, key=lambda d: dims[d])
                lo = bucket.dims[largest][0]
                if dims[largest] // 2 < lo:
                    break
                dims[largest] //= 2
            key = tuple(sorted(dims.items()))
            if key not in seen:
                seen.add(key)
                cases.append((bucket.name, dims))
    return cases


def compare(actual: np.ndarray, expected: np.ndarray) -> dict:
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if a.shape != e.shape:
        return {"shape_mismatch": [list(a.shape), list(e.shape)], "max_abs": float("inf"), "cosine": 0.0, "scale": 1.0}
    if not a.size:
        return {"max_abs": 0.0, "cosine": 1.0, "scale": 1.0}
    err = float(np.abs(a - e).max())
    denom = float(np.linalg.norm(a) * np.linalg.norm(e))
    cos = float(a.ravel() @ e.ravel() / denom) if denom > 0 else float(err == 0.0)
    return {"max_abs": err, "cosine": cos, "scale": max(1.0, float(np.abs(e).max()))}


def verify(model, reference, *, precision: str, settings, on_case=None) -> dict:
    """Run `model` (a runtime Model) and `reference(feeds) -> outputs` on every bucket case."""
    atol, min_cos = settings.atol[precision], settings.min_cosine[precision]
    rng = np.random.default_rng(settings.seed)
    float_outputs = {o.name for o in model.outputs if o.dtype.startswith(("float", "bfloat"))}
    results, passed = [], True
    for bucket, dims in cases_for(model.buckets):
        if on_case is not None:
            on_case(bucket, dims)
        feeds = make_feeds(model.inputs, dims, rng)
        got, want = model.run(feeds), reference(feeds)
        per_output = {}
        for name in got:
            if name not in want:
                continue
            stats = compare(got[name], want[name])
            ok = stats["max_abs"] <= atol * stats["scale"] and (name not in float_outputs or stats["cosine"] >= min_cos)
            per_output[name] = {**stats, "ok": ok}
            passed &= ok
        results.append({"bucket": bucket, "dims": dims, "outputs": per_output})
    worst = {}
    for case in results:
        for name, stats in case["outputs"].items():
            w = worst.setdefault(name, {"max_abs": 0.0, "min_cosine": 1.0})
            w["max_abs"] = max(w["max_abs"], stats["max_abs"])
            w["min_cosine"] = min(w["min_cosine"], stats["cosine"])
    return {"backend": model.backend_name, "precision": precision, "atol": atol, "min_cosine": min_cos,
            "rule": "max_abs <= atol * max(1, max|reference|) and cosine >= min_cosine",
            "passed": passed, "worst": worst, "cases": results}


def describe_failure(report: dict) -> str:
    bad = [(c["bucket"], c["dims"], n, s) for c in report["cases"] for n, s in c["outputs"].items() if not s["ok"]]
    bucket, dims, name, s = max(bad, key=lambda b: b[3]["max_abs"])
    shape = ", ".join(f"{k}={v}" for k, v in dims.items())
    return (f"output {name!r} differs from the reference in bucket {bucket!r} ({shape}): max abs "
            f"{s['max_abs']:.3g} (allowed {report['atol'] * s['scale']:.3g}), cosine {s['cosine']:.6f} "
            f"(allowed >= {report['min_cosine']}) at precision {report['precision']}")


