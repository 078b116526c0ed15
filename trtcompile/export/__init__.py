"""Export: the user's model to an ONNX file whose inputs carry the profile's dimension names.

The file also carries, in its metadata, the source and profile it came from, so the later stages
(`optimize`, `build`, `verify`) need nothing but the file.
"""

from __future__ import annotations

import json

import numpy as np
import onnx

from trtcompile.errors import UserError
from trtcompile.export.source import Source, load_source
from trtcompile.profiles import Profile, parse_profile, resolve_shapes
from trtcompile.settings import ExportSettings

__all__ = ["Source", "default_profile", "export_onnx", "load_source", "read_metadata", "write_metadata"]

METADATA_KEY = "trtcompile"


def default_profile(source: Source) -> Profile:
    """A sane profile when the user gives none: from the model's config, else from the ONNX's own names."""
    if source.default_profile is not None:
        return parse_profile(source.default_profile(), origin=f"default for {source.name}")
    inputs, dims = {}, {}
    for name, shape in source.known_shapes.items():
        spec = []
        for axis, d in enumerate(shape):
            if isinstance(d, int) and d > 0:
                spec.append("_")
            else:
                dim = d if isinstance(d, str) and d and d != "?" else f"{name}_{axis}"
                top = min([512] + [lim.maximum for lim in source.axis_limits
                                   if lim.input == name and lim.axis == axis])
                dims.setdefault(dim, [1, 1, 8] if axis == 0 else [1, min(64, top), top])
                spec.append(dim)
        inputs[name] = spec
    if not inputs or not dims:
        raise UserError(f"no profile given for {source.spec!r}, and its inputs have no dynamic dimension "
                        f"to build buckets from", hint="pass --profile FILE (examples in profiles/)")
    buckets = {"default": dims}
    return parse_profile({"inputs": inputs, "buckets": buckets}, origin=f"derived from {source.spec}")


def export_onnx(source: Source, profile: Profile, settings: ExportSettings, weights_dir=None) -> onnx.ModelProto:
    """The source as ONNX (export for torch sources, a renamed copy for ONNX files), with metadata.

    With `weights_dir` (a directory the caller owns), a torch source's weights are written there
    and the model returned only refers to them (a lazy model, lazy_weights.py)."""
    from trtcompile.export.torch_export import export_module, rename_dims
    from trtcompile.onnx_io import fix_ir_version, load_model
    from trtcompile.stage import absolute_spec  # verify finds the source again from any directory

    from trtcompile.export.limits import check_profile_limits

    check_profile_limits(profile, source.axis_limits)
    if source.fit_profile is not None:
        source.fit_profile(profile.to_dict())
    example_shapes = {n: tuple(np.shape(source.example_inputs[n])) for n in source.input_names}
    shapes = resolve_shapes(profile, example_shapes)
    if source.kind == "onnx":
        model = load_model(source.onnx_path)
        rename_dims(model, shapes)
    else:
        model = export_module(source, shapes, settings, weights_dir=weights_dir)
    fix_ir_version(model)
    write_metadata(model, {
        "source": {"kind": source.kind, "spec": absolute_spec(source.spec), "name": source.name, "task": source.task,
                   "sha256": source.sha256, "config": source.config,
                   "tokenizer_dir": str(source.tokenizer_dir) if source.tokenizer_dir else None,
                   "weights": source.weights},
        "profile": profile.to_dict(), "profile_origin": profile.origin,
        "shapes": shapes, "dtypes": {n: str(np.asarray(source.example_inputs[n]).dtype) if source.kind == "onnx"
                                     else str(source.example_inputs[n].numpy().dtype) for n in source.input_names},
        "value_ranges": {k: list(v) for k, v in source.value_ranges.items()},
        "manifest_extra": source.manifest_extra,
        "export": {"opset": settings.opset, "dynamo": settings.dynamo},
    })
    return model


def write_metadata(model: onnx.ModelProto, data: dict) -> None:
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(data, default=str))


def read_metadata(model: onnx.ModelProto, path: str = "model") -> dict:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise UserError(f"{path!r} carries no trtcompile metadata (it was not written by `trtcompile export`)",
                    hint="start from the model itself: `trtcompile compile MODEL`, or pass --profile")
