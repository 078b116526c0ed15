"""What one stage hands the next: the record a stage file carries in its ONNX metadata, typed.

`trtcompile export` writes a StageRecord into raw.onnx, `optimize` adds its pass report, precision
and timings, and `build`/`compile` read it back to write the manifest, so a package built stage by
stage (export -> optimize -> build) records the same passes, warnings, timings and accuracy as one
built by `compile`. The record is parsed and checked once, here (`read_stage`); a stage file with
no record, or a damaged one, is a UserError naming the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from trtcompile.errors import UserError
from trtcompile.profiles import Profile, parse_profile

METADATA_KEY = "trtcompile"
STAGES = ("export", "optimize")


@dataclass(frozen=True)
class SourceInfo:
    """The model a stage file came from: the reference `verify` compares against."""

    kind: str  # "hf" | "gguf" | "factory" | "onnx"
    spec: str  # absolute: found again from any working directory
    name: str
    task: str
    sha256: str
    config: dict = field(default_factory=dict)
    tokenizer_dir: str | None = None
    weights: dict = field(default_factory=dict)  # where the weights came from (a quantized GGUF file)


@dataclass(frozen=True)
class StageRecord:
    source: SourceInfo
    profile: Profile
    shapes: dict[str, list]
    dtypes: dict[str, str]
    value_ranges: dict[str, list] = field(default_factory=dict)
    manifest_extra: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)
    stage: str = "export"
    precision: str = "fp32"
    passes: list[dict] = field(default_factory=list)  # PassReport.to_dict() of every pass run
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds, accumulated
    extra: dict = field(default_factory=dict)  # keys this version does not know: carried along unchanged

    def with_timings(self, timings: dict[str, float]) -> "StageRecord":
        return replace(self, timings={**self.timings, **timings})

    def to_dict(self) -> dict:
        return {"source": self.source.__dict__, "profile": self.profile.to_dict(), "profile_origin": self.profile.origin,
                "shapes": self.shapes, "dtypes": self.dtypes, "value_ranges": self.value_ranges,
                "manifest_extra": self.manifest_extra, "export": self.export, "stage": self.stage,
                "precision": self.precision, "passes": self.passes, "warnings": self.warnings,
                "timings": self.timings, **self.extra}

    @classmethod
    def from_dict(cls, data, origin: str = "model") -> "StageRecord":
        def bad(key: str, problem: str):
            raise UserError(f"{origin!r}: its trtcompile metadata {key!r} {problem}; the file was changed after "
                            f"`trtcompile export`", hint="export it again with `trtcompile export`")

        def get(obj: dict, key: str, kind, where: str = "", default=...):
            value = obj.get(key)
            if value is None:
                if default is ...:
                    bad(f"{where}{key}", "is missing")
                return default
            if not isinstance(value, kind):
                bad(f"{where}{key}", f"is {type(value).__name__}, expected {kind.__name__}")
            return value

        if not isinstance(data, dict):
            bad("(record)", "is not an object")
        src = get(data, "source", dict)
        source = SourceInfo(kind=get(src, "kind", str, "source."), spec=get(src, "spec", str, "source."),
                            name=get(src, "name", str, "source."), task=get(src, "task", str, "source."),
                            sha256=get(src, "sha256", str, "source.", ""),
                            config=get(src, "config", dict, "source.", {}),
                            tokenizer_dir=get(src, "tokenizer_dir", str, "source.", None),
                            weights=get(src, "weights", dict, "source.", {}))
        try:
            profile = parse_profile(get(data, "profile", dict), origin=get(data, "profile_origin", str, "", "profile"))
        except UserError as exc:
            bad("profile", f"is not a valid profile ({exc})")
        stage = get(data, "stage", str, "", "export")
        if stage not in STAGES:
            bad("stage", f"is {stage!r}, not one of {STAGES}")
        return cls(source=source, profile=profile, shapes=get(data, "shapes", dict), dtypes=get(data, "dtypes", dict),
                   value_ranges=get(data, "value_ranges", dict, "", {}),
                   manifest_extra=get(data, "manifest_extra", dict, "", {}),
                   export=get(data, "export", dict, "", {}), stage=stage,
                   precision=get(data, "precision", str, "", "fp32"), passes=get(data, "passes", list, "", []),
                   warnings=get(data, "warnings", list, "", []), timings=get(data, "timings", dict, "", {}),
                   extra={k: v for k, v in data.items() if k not in _KNOWN})


_KNOWN = {"source", "profile", "profile_origin", "shapes", "dtypes", "value_ranges", "manifest_extra", "export", "stage",
          "precision", "passes", "warnings", "timings"}


def read_stage(model, path: str = "model") -> StageRecord:
    """The record of a stage file (an onnx.ModelProto), parsed and checked once."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            try:
                data = json.loads(prop.value)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path!r}: its trtcompile metadata is not valid JSON ({exc})",
                                hint="export it again with `trtcompile export`") from exc
            return StageRecord.from_dict(data, origin=path)
    raise UserError(f"{path!r} carries no trtcompile metadata (it was not written by `trtcompile export`)",
                    hint="start from the model itself: `trtcompile compile MODEL`, or pass --profile")


def has_stage(model) -> bool:
    return any(prop.key == METADATA_KEY for prop in model.metadata_props)


def write_stage(model, record: StageRecord) -> None:
    for prop in list(model.metadata_props):
        if prop.key == METADATA_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(record.to_dict(), default=str))


def absolute_spec(spec: str) -> str:
    """The user's model argument with its path made absolute (`file.py:factory` keeps its factory)."""
    if ".py:" in spec:
        file, _, func = spec.rpartition(":")
        return f"{Path(file).resolve()}:{func}"
    return str(Path(spec).resolve())


def source_exists(spec: str) -> bool:
    path = spec.rpartition(":")[0] if ".py:" in spec else spec
    return Path(path).exists()
