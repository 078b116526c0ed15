"""Profile files: the one source of truth for shapes.

A profile names each input's symbolic dimensions and gives named buckets with [min, opt, max] per
dimension. Export derives its dynamic axes from it, the builder one TensorRT optimization profile
per bucket, the runtime picks the bucket per call.

    inputs:                       # glob patterns allowed; ints are static; "_" = the model's own
      input_ids: [batch, sequence]                  # static size; "a+b" = a sum of dimensions
      "past_key_values.*": [batch, _, past_sequence, _]
    buckets:
      short: {batch: [1, 1, 8], sequence: [1, 64, 128]}
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path

from trtcompile.errors import UserError
from trtcompile.runtime.shapes import Bucket, dim_terms

STATIC = "_"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Profile:
    inputs: dict[str, list]  # input name or glob pattern -> symbolic shape
    buckets: list[Bucket]
    origin: str = "default"  # the file it came from, or how it was derived

    def shape_of(self, input_name: str) -> list | None:
        if input_name in self.inputs:
            return self.inputs[input_name]
        for pattern, shape in self.inputs.items():
            if fnmatch.fnmatchcase(input_name, pattern):
                return shape
        return None

    def dims(self) -> list[str]:
        return list(self.buckets[0].dims)

    def to_dict(self) -> dict:
        return {"inputs": self.inputs, "buckets": {b.name: {d: list(r) for d, r in b.dims.items()}
                                                   for b in self.buckets}}


def load_profile(path: str | Path) -> Profile:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"profile {str(path)!r} does not exist",
                        hint="pass an existing YAML file to --profile (examples in profiles/)")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(f"profile {str(path)!r} is not valid YAML: {exc}") from exc
    return parse_profile(data, origin=str(path))


def parse_profile(data, origin: str = "profile") -> Profile:
    where = f"profile {origin!r}"
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a mapping with keys 'inputs' and 'buckets', got {type(data).__name__}")
    unknown = sorted(set(data) - {"inputs", "buckets"})
    if unknown:
        raise UserError(f"{where} has unknown key {unknown[0]!r}", hint="the keys are 'inputs' and 'buckets'")
    for key in ("inputs", "buckets"):
        if not isinstance(data.get(key), dict) or not data[key]:
            raise UserError(f"{where}: {key!r} must be a non-empty mapping, got {data.get(key)!r}")

    inputs: dict[str, list] = {}
    used: set[str] = set()
    for name, shape in data["inputs"].items():
        key = f"inputs.{name}"
        if not isinstance(shape, list):
            raise UserError(f"{where}: {key} must be a list of dimensions, got {shape!r}",
                            hint="e.g. [batch, sequence]")
        for dim in shape:
            if isinstance(dim, bool) or not isinstance(dim, (int, str)):
                raise UserError(f"{where}: {key} has dimension {dim!r}; use an int, '_' or a name")
            if isinstance(dim, int):
                if dim < 0:
                    raise UserError(f"{where}: {key} has negative size {dim}")
                continue
            if dim == STATIC:
                continue
            for term in dim_terms(dim):
                if not _NAME.match(term):
                    raise UserError(f"{where}: {key} has dimension {dim!r}; names are letters, digits "
                                    f"and '_', and 'a+b' sums names")
                used.add(term)
        inputs[str(name)] = shape

    buckets = []
    for bname, dims in data["buckets"].items():
        key = f"buckets.{bname}"
        if not isinstance(dims, dict):
            raise UserError(f"{where}: {key} must map dimension names to [min, opt, max], got {dims!r}")
        ranges = {}
        for dim, rng in dims.items():
            if dim not in used:
                raise UserError(f"{where}: {key}.{dim} is not a dimension of any input",
                                hint=f"the inputs use {sorted(used)}")
            ok = (isinstance(rng, list) and len(rng) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                  for v in rng))
            if not ok or not (0 <= rng[0] <= rng[1] <= rng[2]):
                raise UserError(f"{where}: {key}.{dim} must be [min, opt, max] with 0 <= min <= opt <= max, "
                                f"got {rng!r}")
            ranges[dim] = tuple(rng)
        missing = sorted(used - set(ranges))
        if missing:
            raise UserError(f"{where}: {key} gives no range for dimension {missing[0]!r}",
                            hint=f"add {missing[0]}: [min, opt, max] to bucket {bname!r}")
        buckets.append(Bucket(str(bname), ranges))
    return Profile(inputs, buckets, origin)


def resolve_shapes(profile: Profile, example_shapes: dict[str, tuple[int, ...]]) -> dict[str, list]:
    """The symbolic shape of each model input: the profile's, with '_' replaced by the example's size.

    Every model input must be covered by the profile, with the right rank.
    """
    shapes = {}
    for name, example in example_shapes.items():
        spec = profile.shape_of(name)
        if spec is None:
            raise UserError(f"profile {profile.origin!r} gives no shape for model input {name!r}",
                            hint=f"add `{name}: [...]` under inputs (the example has shape {list(example)})")
        if len(spec) != len(example):
            raise UserError(f"profile {profile.origin!r}: input {name!r} has rank {len(spec)} ({spec}) but the "
                            f"model's input has rank {len(example)} (example shape {list(example)})")
        shapes[name] = [example[i] if d == STATIC else d for i, d in enumerate(spec)]
    return shapes
