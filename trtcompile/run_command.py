"""`trtcompile run`: run a package once (or repeatedly, for latency) from the command line."""

from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import numpy as np


def parse_dims(pairs: tuple[str, ...]) -> dict[str, int]:
    from trtcompile.errors import UserError

    dims = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        if not value.strip().isdigit():
            raise UserError(f"--dim {pair!r} is not NAME=VALUE", hint="e.g. --dim batch=2 --dim sequence=128")
        dims[name.strip()] = int(value)
    return dims


def load_inputs(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz, by name; anything else is a UserError naming the file."""
    from trtcompile.errors import UserError

    hint = "save one array per input name: np.savez('x.npz', input_ids=ids, attention_mask=mask)"
    if not path.is_file():
        raise UserError(f"--inputs {str(path)!r} does not exist", hint=hint)
    if path.suffix == ".npy":
        raise UserError(f"--inputs {str(path)!r} is one .npy array, but a package takes named inputs", hint=hint)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise UserError(f"--inputs {str(path)!r} is one array, not an .npz of named inputs", hint=hint)
            return {k: data[k] for k in data.files}
    except UserError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"--inputs {str(path)!r} is not a readable .npz ({str(exc).splitlines()[0][:200]})",
                        hint=hint) from exc


def check_save_path(save: Path) -> None:
    from trtcompile.errors import UserError

    parent = save.parent if str(save.parent) else Path(".")
    if save.is_dir() or not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--save {str(save)!r} cannot be written: {str(parent)!r} is not a writable directory"
                        if not save.is_dir() else f"--save {str(save)!r} is a directory",
                        hint="pass a file path in an existing directory, e.g. --save out.npz")


def run_package(package: Path, inputs: Path | None, dims: tuple[str, ...], backend: str, save: Path | None,
                iterations: int) -> dict:
    """Run and describe the call; {"text": what the CLI prints, ...the same as data for --json}."""
    from trtcompile import runtime
    from trtcompile.errors import UserError
    from trtcompile.verify import make_feeds

    if inputs is not None and dims:
        raise UserError("--inputs and --dim both say what to feed; give one of them",
                        hint="--inputs x.npz runs those arrays; --dim NAME=VALUE generates inputs of that size")
    if iterations < 1:
        raise UserError(f"--iterations {iterations} must be at least 1")
    if save is not None:
        check_save_path(save)  # before the run, not after it
    feeds = load_inputs(inputs) if inputs is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", runtime.BackendFallbackWarning)
        model = runtime.load(package, backend=backend)
    notes = [f"note: {w.message}" for w in caught if issubclass(w.category, runtime.BackendFallbackWarning)]
    for w in caught:
        if not issubclass(w.category, runtime.BackendFallbackWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    with model:
        if feeds is None:
            values = {d: r[1] for d, r in model.buckets[0].dims.items()}
            given = parse_dims(dims)
            unknown = sorted(set(given) - set(values))
            if unknown:
                raise UserError(f"--dim {unknown[0]!r} is not a dimension of this package", hint=f"use {sorted(values)}")
            values.update(given)
            feeds = make_feeds(model.inputs, values, np.random.default_rng(0))
        bucket = model.bucket_for(feeds)
        outputs = model.run(feeds)
        result = {"backend": model.backend_name, "bucket": bucket.name, "notes": notes,
                  "inputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in feeds.items()},
                  "outputs": {k: {"dtype": str(v.dtype), "shape": list(v.shape), "mean": float(np.mean(v)),
                                  "std": float(np.std(v))} for k, v in outputs.items()}}
        if iterations > 1:
            from trtcompile.timing import time_fn

            t = time_fn(lambda: model.run(feeds), warmup=min(5, iterations), iters=iterations)
            result["latency_ms"] = {"runs": t.iters, "median": t.median_ms, "p99": t.p99_ms, "mean": t.mean_ms}
    if save is not None:
        np.savez(save, **outputs)
        result["saved"] = str(save)
    lines = notes + [f"backend {result['backend']}, bucket {result['bucket']}"]
    lines += [f"  in  {k}: {v['dtype']} {v['shape']}" for k, v in result["inputs"].items()]
    lines += [f"  out {k}: {v['dtype']} {v['shape']}  mean {v['mean']:.5g}  std {v['std']:.5g}"
              for k, v in result["outputs"].items()]
    if "latency_ms" in result:
        lat = result["latency_ms"]
        lines.append(f"latency over {lat['runs']} runs: median {lat['median']:.3f} ms, p99 {lat['p99']:.3f} ms")
    if save is not None:
        lines.append(f"wrote {save}")
    return {"text": "\n".join(lines), **result}
