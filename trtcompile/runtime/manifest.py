"""Reading a package's manifest and checking it against the files beside it.

Shared by the runtime and the compiler (the compiler writes what this reads), so it imports
nothing but the standard library and numpy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from trtcompile.runtime.shapes import Bucket, TensorSpec

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"


class PackageError(RuntimeError):
    """A package that cannot be loaded as it is: the message says which file and what to rebuild."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.data["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_dict(d) for d in self.data["outputs"]]

    @property
    def buckets(self) -> list[Bucket]:
        return [Bucket.from_dict(d) for d in self.data["buckets"]]

    @property
    def engines(self) -> list[dict]:
        return self.data.get("engines", [])

    @property
    def precision(self) -> str:
        return self.data.get("precision", "fp32")

    def path(self, name: str) -> Path:
        return self.root / name


def read_manifest(root: str | Path, *, check_files: bool = True) -> Manifest:
    root = Path(root)
    path = root / MANIFEST
    if not root.is_dir():
        raise PackageError(f"package directory {str(root)!r} does not exist; compile one with "
                           f"`trtcompile compile MODEL -o {root}`")
    if not path.is_file():
        raise PackageError(f"{str(root)!r} has no {MANIFEST}: not a trtcompile package "
                           f"(or a compile that never finished); recompile it")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise PackageError(f"{str(path)!r} is not valid JSON ({exc}); recompile the package") from exc
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PackageError(f"{str(path)!r} has schema_version {version!r}, this trtcompile reads "
                           f"{SCHEMA_VERSION}; recompile the package with this version")
    manifest = Manifest(root, data)
    if check_files:
        check_package_files(manifest)
    return manifest


def check_package_files(manifest: Manifest) -> None:
    """Every file the manifest lists is present with its recorded size and sha256."""
    for name, meta in manifest.data.get("files", {}).items():
        path = manifest.root / name
        if not path.is_file():
            raise PackageError(f"package {str(manifest.root)!r} is missing {name!r}, which its manifest "
                               f"lists; recompile the package (or restore the file)")
        size = path.stat().st_size
        if size != meta["bytes"] or sha256_of(path) != meta["sha256"]:
            raise PackageError(f"{name!r} in package {str(manifest.root)!r} does not match its manifest "
                               f"(sha256 or size differs: {size} bytes, manifest says {meta['bytes']}); "
                               f"the file was changed after compile: recompile the package")
