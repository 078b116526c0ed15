"""Tiny causal-LM packages compiled once per test session (shared by the export and runtime tests)."""

from __future__ import annotations

from pathlib import Path

_PACKAGES: dict[str, Path] = {}


def compiled_decoder(family: str, root: Path) -> Path:
    """A package of the tiny `family` checkpoint with the default decoder profile, ONNX only."""
    if family not in _PACKAGES:
        from tiny_models import save_checkpoint

        from trtcompile.compile import compile_package

        checkpoint = save_checkpoint(family, root / f"{family}-checkpoint")
        compile_package(str(checkpoint), root / f"{family}-package")
        _PACKAGES[family] = root / f"{family}-package"
    return _PACKAGES[family]


def hf_model(family: str):
    """The same weights as the compiled package (tiny_models.build is seeded)."""
    from tiny_models import build

    return build(family)
