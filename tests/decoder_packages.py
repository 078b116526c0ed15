"""Tiny causal-LM packages compiled once per test session (shared by the export and runtime tests)."""

from __future__ import annotations

from pathlib import Path

_PACKAGES: dict[tuple, Path] = {}


def compiled_decoder(family: str, root: Path, profile: dict | None = None, **export) -> Path:
    """A package of the tiny `family` checkpoint (default decoder profile unless given), ONNX only.

    `export` goes to ExportSettings (kv_cache="concat", kv_cache_dtype="fp16", all_logits=True, ...).
    """
    key = (family, repr(profile), *sorted(export.items()))
    if key not in _PACKAGES:
        from tiny_models import save_checkpoint

        from trtcompile.compile import compile_package
        from trtcompile.settings import ExportSettings

        name = "-".join([family, *(f"{k}-{v}" for k, v in sorted(export.items()))]) + ("-profile" if profile else "")
        checkpoint = root / f"{family}-checkpoint"
        if not checkpoint.is_dir():
            save_checkpoint(family, checkpoint)
        profile_path = None
        if profile:
            import yaml

            profile_path = root / f"{name}.yaml"
            profile_path.write_text(yaml.safe_dump(profile))
        compile_package(str(checkpoint), root / f"{name}-package", profile_path=profile_path,
                        export=ExportSettings(**export))
        _PACKAGES[key] = root / f"{name}-package"
    return _PACKAGES[key]


def hf_model(family: str):
    """The same weights as the compiled package (tiny_models.build is seeded)."""
    from tiny_models import build

    return build(family)
