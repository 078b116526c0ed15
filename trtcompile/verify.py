"""Compare a package against the original model on inputs drawn from each bucket.

The reference is PyTorch for torch sources and the original ONNX file for ONNX sources. Per bucket
two shapes are checked (the bucket's opt and a max bounded in memory), so every bucket and both ends
of the dynamic range are covered. compile computes the reference outputs right after export and
frees the original model before the package's ONNX Runtime session opens; the reference outputs
wait on disk, and each output is compared and dropped in turn. The errors are scaled: max abs
error <= atol * max(1, max |reference|), so large-magnitude outputs (LM logits) are held to a
relative bound and small ones to an absolute one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtcompile.runtime.shapes import Bucket, TensorSpec

# Verification stays affordable on CPU: shapes above this many elements per input are shrunk,
# and so are shapes whose largest output would exceed MAX_OUTPUT_BYTES.
MAX_VERIFY_ELEMENTS = 1 << 14
MAX_OUTPUT_BYTES = 64 << 20
# ... and all outputs of one case together (a decode bucket's 2 x layers present K/V at a long past).
MAX_CASE_BYTES = 128 << 20
# Outputs are compared this many elements at a time.
COMPARE_CHUNK = 1 << 20
# ONNX Runtime session entries for verifying on the onnxruntime backend: the session reads the
# weights where they lie, memory-mapped from the package's model.onnx.data, instead of copying
# them. Prepacking copies every MatMul weight into MLAS's own layout, and constant folding stores
# a transposed copy of a tied embedding for lm_head (a Transpose+MatMul fuses into one MatMul
# with transB instead); both only speed up repeated runs of a session, and verification runs each
# shape once. SmolLM2: the session's peak 688 -> 67 MiB before the first run, 928 -> 869 MiB after it.
VERIFY_SESSION_CONFIG = {"session.disable_prepacking": "1",
                         "optimization.disable_specified_optimizers": "ConstantFolding"}


def make_feeds(inputs: list[TensorSpec], dims: dict[str, int], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Inputs of the given dimension values that look like what a model gets (ids in range, masks
    with right padding, positions counting up)."""
    from trtcompile.runtime.shapes import eval_dim

    shapes = {s.name: tuple(eval_dim(d, dims) for d in s.shape) for s in inputs}
    feeds = {}
    for spec in inputs:
        shape, dtype = shapes[spec.name], np.dtype(spec.dtype)
        if spec.name == "attention_mask" and len(shape) == 2:
            # Right padding, a different length per row. Where one new token comes (decode), the
            # hole ends before it: a masked query has no defined output (PyTorch and ONNX Runtime
            # fill it differently, and 30 layers on it differ by 1e-2), and generation never has one.
            new = shapes.get("input_ids", (0, 0))[-1] if len(shapes.get("input_ids", ())) == 2 else 0
            end = shape[1] - 1 if new == 1 and shape[1] > 1 else shape[1]
            mask = np.ones(shape, dtype)
            for row in range(1, shape[0]):
                mask[row, max(1, end - row * max(1, end // 4)):end] = 0
            feeds[spec.name] = mask
        elif spec.name == "position_ids" and len(shape) == 2:
            first = _first_new_position(shapes, shape[1])
            feeds[spec.name] = np.broadcast_to(np.arange(first, first + shape[1], dtype=dtype), shape).copy()
        elif spec.name == "cache_position" and len(shape) == 1:
            # A static KV cache's write position, where position_ids say the new tokens are: inside
            # the slots attention reads, as generation writes them. A random one (the generic integer
            # draw) left the new tokens outside that window, so every query saw only random K/V: an
            # input generation never makes, on which SmolLM2's own fp32 rounding error (PyTorch fp32
            # vs fp64) grows 20x, to 1.5e-3 on deep caches, above FP32's 1e-4 bound.
            feeds[spec.name] = np.full(shape, _first_new_position(shapes, shapes.get("input_ids", (0, 0))[-1]), dtype)
        elif dtype == np.bool_:
            feeds[spec.name] = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            low, high = spec.value_range or (0, 2)
            feeds[spec.name] = rng.integers(int(low), int(high), size=shape, dtype=dtype)
        else:
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def _first_new_position(shapes: dict[str, tuple], new: int) -> int:
    """The position of the first new token: the new tokens are the last of the attention mask's
    slots (past + new, or a static cache's kv_sequence); 0 when the mask is narrower than them."""
    return max(0, shapes.get("attention_mask", (new,))[-1] - new)


def cases_for(buckets: list[Bucket], outputs: list[TensorSpec] = ()) -> list[tuple[str, dict[str, int]]]:
    """(bucket, dimension values) at each bucket's opt and a bounded max, deduplicated.

    A case is shrunk (a dimension halved at a time, never below the bucket's min: the largest, or
    while the outputs are over their limits the one that shrinks them most) until its inputs
    stay under MAX_VERIFY_ELEMENTS each, every output under MAX_OUTPUT_BYTES and all outputs under
    MAX_CASE_BYTES (the reference keeps them until the package runs): a prefill bucket's
    max of [4, 512, 262144] logits would be 2 GiB per copy, and verification holds three (the
    reference, ORT's output and a comparison chunk). The shrunk max still exceeds the opt case,
    so both ends of the range are exercised.
    """
    seen, cases = set(), []
    for bucket in buckets:
        for which in (1, 2):
            dims = {d: r[which] for d, r in bucket.dims.items()}
            while True:
                shrink = _dimension_to_halve(bucket, dims, outputs)
                if shrink is None:
                    break
                dims[shrink] //= 2
            key = tuple(sorted(dims.items()))
            if key not in seen:
                seen.add(key)
                cases.append((bucket.name, dims))
    return cases


def _dimension_to_halve(bucket: Bucket, dims: dict[str, int], outputs: list[TensorSpec]) -> str | None:
    """The dimension to halve next while the case is over a limit (None: within them, or nothing left
    to halve). Over the outputs' byte limits it is the dimension that shrinks the outputs most: a
    static KV cache's present outputs grow with batch, not with kv_sequence, and halving kv_sequence
    there only made the case read a shorter cache without making it any cheaper."""
    sizes = _output_bytes(outputs, dims)
    over_outputs = max(sizes or [0]) > MAX_OUTPUT_BYTES or sum(sizes) > MAX_CASE_BYTES
    if np.prod([max(v, 1) for v in dims.values()]) <= MAX_VERIFY_ELEMENTS and not over_outputs:
        return None
    candidates = [d for d in dims if dims[d] // 2 >= bucket.dims[d][0]]
    if not candidates:
        return None
    if over_outputs:
        def after(d: str) -> int:
            return sum(_output_bytes(outputs, {**dims, d: dims[d] // 2}))

        best = min(candidates, key=lambda d: (after(d), -dims[d]))
        if after(best) < sum(sizes):
            return best
    return max(candidates, key=lambda d: dims[d])


def _output_bytes(outputs: list[TensorSpec], dims: dict[str, int]) -> list[int]:
    from trtcompile.runtime.shapes import eval_dim

    sizes = []
    for spec in outputs:
        try:
            size = int(np.prod([eval_dim(d, dims) for d in spec.shape], dtype=np.int64))
        except (KeyError, ValueError):  # a dimension the profile does not name: unknown, not large
            continue
        sizes.append(size * np.dtype(spec.dtype if spec.dtype != "bfloat16" else "float16").itemsize)
    return sizes


def compare(actual: np.ndarray, expected: np.ndarray) -> dict:
    """Max abs error and cosine, in float32 chunks (float64 sums): no whole-tensor float64 copies."""
    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape:
        return {"shape_mismatch": [list(a.shape), list(e.shape)], "max_abs": float("inf"), "cosine": 0.0, "scale": 1.0}
    if not a.size:
        return {"max_abs": 0.0, "cosine": 1.0, "scale": 1.0}
    a, e = a.reshape(-1), e.reshape(-1)
    err = dot = na = ne = peak = 0.0
    for start in range(0, a.size, COMPARE_CHUNK):
        x = a[start:start + COMPARE_CHUNK].astype(np.float32, copy=False)
        y = e[start:start + COMPARE_CHUNK].astype(np.float32, copy=False)
        chunk = float(np.abs(x - y).max())
        err = max(err, chunk) if np.isfinite(chunk) else float("inf")  # max() would skip a NaN
        peak = max(peak, float(np.abs(y).max()))
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        dot, na, ne = dot + float(x64 @ y64), na + float(x64 @ x64), ne + float(y64 @ y64)
    denom = float(np.sqrt(na) * np.sqrt(ne))
    cos = dot / denom if denom > 0 else float(err == 0.0)
    return {"max_abs": err, "cosine": float(cos), "scale": max(1.0, peak)}


class OutputsOnDisk(Mapping):
    """One case's reference outputs, written to .npy files at once and read back (memory-mapped)
    one at a time when compared.

    Why: compile keeps every case's reference from before the passes until the package's session
    has run, and a static KV cache's outputs are the whole cache per layer (SmolLM2: 90 MiB per
    case, 360 MiB for four); held in memory they were a fifth of the compile's peak."""

    def __init__(self, directory: Path, outputs: dict[str, np.ndarray]):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.names = list(outputs)
        for index, name in enumerate(self.names):
            np.save(self._file(index), np.ascontiguousarray(outputs[name]), allow_pickle=False)

    def _file(self, index: int) -> Path:
        return self.directory / f"{index}.npy"

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise KeyError(name)
        # Mapped, not read: compare() walks it in chunks, and dropping it unmaps it.
        return np.load(self._file(self.names.index(name)), mmap_mode="r", allow_pickle=False)

    def __contains__(self, name) -> bool:  # Mapping's default would read the file to find out
        return name in self.names

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class ReferenceCase:
    """One case's reference outputs. Its inputs are drawn again from the seed when the package runs:
    a static KV cache's inputs are as large as its outputs, and compile keeps every case meanwhile."""

    bucket: str
    dims: dict[str, int]
    inputs: list[TensorSpec]
    seed: int
    expected: Mapping[str, np.ndarray]

    @property
    def feeds(self) -> dict[str, np.ndarray]:
        return make_feeds(self.inputs, self.dims, np.random.default_rng(self.seed))


def reference_cases(inputs: list[TensorSpec], outputs: list[TensorSpec], buckets: list[Bucket], reference,
                    settings, directory: Path, on_case=None) -> list[ReferenceCase]:
    """The original model's outputs on every case, computed once and kept in files under
    `directory` (OutputsOnDisk), so the original model (PyTorch weights, or the original ONNX's
    session) can be freed before the package's session opens, and no case's outputs stay in memory."""
    cases = []
    for index, (bucket, dims) in enumerate(cases_for(buckets, outputs)):
        if on_case is not None:
            on_case(bucket, dims)
        case = ReferenceCase(bucket, dims, list(inputs), settings.seed + index, {})
        case.expected = OutputsOnDisk(Path(directory) / f"case{index}", reference(case.feeds))
        cases.append(case)
    return cases


def verify(model, reference, *, precision: str, settings, on_case=None,
           cases: list[ReferenceCase] | None = None) -> dict:
    """Run `model` (a runtime Model) on every case and compare with the reference's outputs.

    `cases` are precomputed references (compile computes them before freeing the original model);
    without them, `reference(feeds) -> outputs` is called per case first, into a temporary directory.
    """
    if cases is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="trtcompile-reference-") as directory:
            cases = reference_cases(model.inputs, model.outputs, model.buckets, reference, settings, Path(directory))
            return _verify_cases(model, cases, precision, settings, on_case)
    return _verify_cases(model, cases, precision, settings, on_case)


# Quantized weights: random inputs only show that the graph is not broken (VerifySettings). A case
# whose new tokens also read KV-cache slots holding random values is worse: attention over random K/V
# turns 4- and 8-bit rounding into unrelated logits (SmolLM2-135M, INT4 RTN block 128: logits cosine
# -0.59 and 0.24 on its two decode cases, 0.993 and 0.997 on its prefill cases, which read only what
# they write). There a quantized package is held to matching shapes and finite values; its accuracy on
# real text is the quantizer's held-out gate, recorded in the manifest.
QUANTIZED = ("int8", "fp8", "int4")
FINITE_ONLY = "finite and shaped only: quantized weights on a random KV cache (accuracy on text: the quantizer's gate)"


def _reads_random_cache(model, case: ReferenceCase) -> bool:
    """Whether the case's new tokens attend to cache slots that verification filled with random values."""
    from trtcompile.runtime.shapes import eval_dim

    past = set((model.manifest.data.get("generation") or {}).get("past_inputs") or [])
    if not past:
        return False
    shapes = {s.name: tuple(eval_dim(d, case.dims) for d in s.shape) for s in case.inputs}
    new = shapes.get("input_ids", (0, 0))[-1] if len(shapes.get("input_ids", ())) == 2 else 0
    return _first_new_position(shapes, new) > 0


def _verify_cases(model, cases: list[ReferenceCase], precision: str, settings, on_case) -> dict:
    atol, min_cos = settings.atol[precision], settings.min_cosine[precision]
    float_outputs = {o.name for o in model.outputs if o.dtype.startswith(("float", "bfloat"))}
    results, passed = [], True
    for case in cases:
        if on_case is not None:
            on_case(case.bucket, case.dims)
        finite_only = precision in QUANTIZED and _reads_random_cache(model, case)
        got = model.run(case.feeds)
        per_output = {}
        for name in list(got):
            actual = got.pop(name)  # each output freed once compared: a case's outputs are not held twice
            if name not in case.expected:
                continue
            stats = compare(actual, case.expected[name])
            if finite_only:  # a shape mismatch or a NaN/inf makes max_abs inf or nan
                ok = bool(np.isfinite(stats["max_abs"]))
            else:
                ok = stats["max_abs"] <= atol * stats["scale"] and (name not in float_outputs
                                                                     or stats["cosine"] >= min_cos)
            per_output[name] = {**stats, "ok": ok}
            passed &= ok
        results.append({"bucket": case.bucket, "dims": case.dims, "outputs": per_output,
                        **({"checked": FINITE_ONLY} if finite_only else {})})
    worst = {}
    for case in results:
        if "checked" in case:  # not held to the bounds: their errors say nothing about the package
            continue
        for name, stats in case["outputs"].items():
            w = worst.setdefault(name, {"max_abs": 0.0, "min_cosine": 1.0})
            w["max_abs"] = max(w["max_abs"], stats["max_abs"])
            w["min_cosine"] = min(w["min_cosine"], stats["cosine"])
    return {"backend": model.backend_name, "precision": precision, "atol": atol, "min_cosine": min_cos,
            "rule": "max_abs <= atol * max(1, max|reference|) and cosine >= min_cosine",
            "passed": passed, "worst": worst, "cases": results}


def _closest_to_limit(report: dict, failed_only: bool) -> tuple:
    """(bucket, dims, output, stats) whose error uses most of its allowance (among the cases held to
    the bounds; a failed finite-only case when that is all that failed)."""
    rows = [(c["bucket"], c["dims"], n, s) for c in report["cases"] for n, s in c["outputs"].items()
            if not (failed_only and s["ok"]) and ("checked" not in c or (failed_only and not s["ok"]))]

    def used(row) -> float:  # share of the allowance used; atol 0 (exact) makes any error infinite
        allowed = report["atol"] * row[3]["scale"]
        return row[3]["max_abs"] / allowed if allowed > 0 else (float("inf") if row[3]["max_abs"] > 0 else 0.0)

    return max(rows, key=used)


def _where(bucket: str, dims: dict) -> str:
    return f"bucket {bucket!r} ({', '.join(f'{k}={v}' for k, v in dims.items())})"


def summary_line(report: dict) -> str:
    """One line for the terminal; the per-output, per-case detail is in the manifest (`inspect`)."""
    buckets = len({c["bucket"] for c in report["cases"]})
    head = f"{'passed' if report['passed'] else 'FAILED'} on {len(report['cases'])} shapes in {buckets} bucket(s)"
    if not any(c["outputs"] for c in report["cases"]):
        return head
    lenient = sum("checked" in c for c in report["cases"])
    note = f"; {lenient} case(s) reading a random KV cache checked for finite values only" if lenient else ""
    if not report["worst"]:
        return head + note
    bucket, dims, name, s = _closest_to_limit(report, failed_only=False)
    cos = min(w["min_cosine"] for w in report["worst"].values())
    return (f"{head}; worst: {name} max abs {s['max_abs']:.2g} (allowed {report['atol'] * s['scale']:.2g}) in "
            f"{_where(bucket, dims)}; min cosine {cos:.6f} over {len(report['worst'])} outputs{note}")


def describe_failure(report: dict) -> str:
    bucket, dims, name, s = _closest_to_limit(report, failed_only=True)
    case = next(c for c in report["cases"] if c["bucket"] == bucket and c["dims"] == dims)
    if "checked" in case:
        shape = f" (shape {s['shape_mismatch'][0]}, expected {s['shape_mismatch'][1]})" if "shape_mismatch" in s else ""
        return (f"output {name!r} in {_where(bucket, dims)} is not finite or not shaped as the reference's{shape}, "
                f"at precision {report['precision']}")
    return (f"output {name!r} differs from the reference in {_where(bucket, dims)}: max abs "
            f"{s['max_abs']:.3g} (allowed {report['atol'] * s['scale']:.3g}), cosine {s['cosine']:.6f} "
            f"(allowed >= {report['min_cosine']}) at precision {report['precision']}")
