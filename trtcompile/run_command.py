"""`trtcompile run`: run a package once (or repeatedly, for latency) from the command line."""

from __future__ import annotations

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


def run_package(package: Path, inputs: Path | None, dims: tuple[str, ...], backend: str, save: Path | None,
                iterations: int) -> str:
    from trtcompile import runtime
    from trtcompile.errors import UserError
    from trtcompile.verify import make_feeds

    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", runtime.BackendFallbackWarning)
        model = runtime.load(package, backend=backend)
    notes = [f"note: {w.message}" for w in caught if issubclass(w.category, runtime.BackendFallbackWarning)]
    for w in caught:
        if not issubclass(w.category, runtime.BackendFallbackWarning):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if inputs is not None:
        if not inputs.is_file():
            raise UserError(f"--inputs {str(inputs)!r} does not exist")
        with np.load(inputs) as data:
            feeds = {k: data[k] for k in data.files}
    else:
        values = {d: r[1] for d, r in model.buckets[0].dims.items()}
        given = parse_dims(dims)
        unknown = sorted(set(given) - set(values))
        if unknown:
            raise UserError(f"--dim {unknown[0]!r} is not a dimension of this package", hint=f"use {sorted(values)}")
        values.update(given)
        feeds = make_feeds(model.inputs, values, np.random.default_rng(0))
    bucket = model.bucket_for(feeds)
    outputs = model.run(feeds)
    lines = notes + [f"backend {model.backend_name}, bucket {bucket.name}"]
    lines += [f"  in  {k}: {v.dtype} {list(v.shape)}" for k, v in feeds.items()]
    lines += [f"  out {k}: {v.dtype} {list(v.shape)}  mean {float(np.mean(v)):.5g}  std {float(np.std(v)):.5g}"
              for k, v in outputs.items()]
    if iterations > 1:
        from trtcompile.timing import time_fn

        t = time_fn(lambda: model.run(feeds), warmup=min(5, iterations), iters=iterations)
        lines.append(f"latency over {t.iters} runs: median {t.median_ms:.3f} ms, p99 {t.p99_ms:.3f} ms")
    if save is not None:
        np.savez(save, **outputs)
        lines.append(f"wrote {save}")
    model.close()
    return "\n".join(lines)
