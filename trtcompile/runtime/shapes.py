"""Symbolic shapes and buckets: which bucket a call falls in, and why an input fits none.

A manifest input's shape lists ints (static), dimension names ("batch"), or sums of names
("sequence+past_sequence"). A bucket gives [min, opt, max] per dimension name.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class InputError(ValueError):
    """A run() input that does not match the package: the message names input, value and range."""


@dataclass(frozen=True)
class Bucket:
    name: str
    dims: dict[str, tuple[int, int, int]]  # dim name -> (min, opt, max)

    def contains(self, values: dict[str, int]) -> bool:
        return all(lo <= values[d] <= hi for d, (lo, _, hi) in self.dims.items() if d in values)

    def size(self) -> int:
        # max(hi, 1): a dimension fixed at 0 (prefill past length) must not zero the product
        return int(np.prod([max(hi, 1) for (_, _, hi) in self.dims.values()] or [1], dtype=np.int64))

    def shape_of(self, spec: list, which: int) -> tuple[int, ...]:
        """The concrete shape of a symbolic spec at min (0), opt (1) or max (2) of this bucket."""
        return tuple(eval_dim(d, {k: v[which] for k, v in self.dims.items()}) for d in spec)

    @classmethod
    def from_dict(cls, d: dict) -> "Bucket":
        return cls(d["name"], {k: tuple(int(x) for x in v) for k, v in d["dims"].items()})

    def to_dict(self) -> dict:
        return {"name": self.name, "dims": {k: list(v) for k, v in self.dims.items()}}


def dim_terms(dim) -> list[str]:
    return [t.strip() for t in str(dim).split("+")]


def eval_dim(dim, values: dict[str, int]) -> int:
    if isinstance(dim, int):
        return dim
    return sum(int(t) if t.lstrip("-").isdigit() else values[t] for t in dim_terms(dim))


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: list  # of int | str
    value_range: tuple[float, float] | None = None  # [low, high) for generated/checked values

    @classmethod
    def from_dict(cls, d: dict) -> "TensorSpec":
        vr = d.get("value_range")
        return cls(d["name"], d["dtype"], list(d["shape"]), tuple(vr) if vr else None)

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": self.shape}
        if self.value_range is not None:
            d["value_range"] = list(self.value_range)
        return d


def bind_dims(inputs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> dict[str, int]:
    """Check names, dtypes and ranks; return the value of every named dimension."""
    expected = {s.name for s in inputs}
    unknown = sorted(set(feeds) - expected)
    if unknown:
        raise InputError(f"unknown input {unknown[0]!r}; this model takes {sorted(expected)}")
    missing = [s.name for s in inputs if s.name not in feeds]
    if missing:
        raise InputError(f"missing input {missing[0]!r}; this model takes {[s.name for s in inputs]}")

    values: dict[str, int] = {}
    seen_from: dict[str, str] = {}
    sums = []
    for spec in inputs:
        array = feeds[spec.name]
        if not isinstance(array, np.ndarray):
            raise InputError(f"input {spec.name!r} is a {type(array).__name__}; pass a numpy array")
        if array.dtype != np.dtype(spec.dtype):
            raise InputError(f"input {spec.name!r} has dtype {array.dtype}, expected {spec.dtype}; "
                             f"convert it with .astype(np.{spec.dtype})")
        if array.ndim != len(spec.shape):
            raise InputError(f"input {spec.name!r} has rank {array.ndim} (shape {list(array.shape)}), "
                             f"expected rank {len(spec.shape)} {spec.shape}")
        for axis, (dim, actual) in enumerate(zip(spec.shape, array.shape)):
            if isinstance(dim, int):
                if actual != dim:
                    raise InputError(f"input {spec.name!r} dimension {axis} is {actual}, "
                                     f"expected {dim} (shape {spec.shape})")
            elif "+" in str(dim):
                sums.append((spec.name, axis, dim, actual))
            elif dim in values and values[dim] != actual:
                raise InputError(f"input {spec.name!r} dimension {axis} ({dim!r}) is {actual}, but "
                                 f"{seen_from[dim]!r} has {dim!r} = {values[dim]}; they must agree")
            else:
                values[dim] = actual
                seen_from[dim] = spec.name
    for name, axis, dim, actual in sums:
        terms = dim_terms(dim)
        free = [t for t in terms if t not in values and not t.lstrip("-").isdigit()]
        if len(free) == 1:  # e.g. past_sequence known only through total = sequence + past
            values[free[0]] = actual - sum(eval_dim(t, values) for t in terms if t != free[0])
        elif eval_dim(dim, values) != actual:
            raise InputError(f"input {name!r} dimension {axis} is {actual}, expected {dim} = "
                             f"{eval_dim(dim, values)}")
    return values


def bucket_for(buckets: list[Bucket], inputs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> Bucket:
    """The smallest bucket that holds every dimension of this call, or an InputError saying why none does."""
    values = bind_dims(inputs, feeds)
    fitting = [b for b in buckets if b.contains(values)]
    if fitting:
        return min(fitting, key=Bucket.size)
    # Name the dimension that fits no bucket, with each bucket's range for it.
    for dim, value in values.items():
        ranges = {b.name: b.dims[dim] for b in buckets if dim in b.dims}
        if ranges and not any(lo <= value <= hi for lo, _, hi in ranges.values()):
            owner = next(s.name for s in inputs if dim in [t for d in s.shape for t in dim_terms(d)])
            allowed = ", ".join(f"{n}: {lo}..{hi}" for n, (lo, _, hi) in ranges.items())
            raise InputError(f"input {owner!r}: {dim} = {value} is outside every bucket ({allowed}); "
                             f"use a smaller input or recompile with a profile whose buckets cover it")
    desc = ", ".join(f"{d}={v}" for d, v in values.items())
    raise InputError(f"no single bucket holds {desc} (each fits some bucket, no bucket fits all): "
                     + "; ".join(f"{b.name}: " + ", ".join(f"{d} {lo}..{hi}" for d, (lo, _, hi) in b.dims.items())
                                 for b in buckets)
                     + "; recompile with a bucket that covers this combination")
