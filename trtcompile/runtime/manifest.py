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
    """Every file the manifest lists is present with its recorded size.

    Cheap on purpose: a service loads packages at start-up, and hashing gigabytes it will never
    read (model.onnx next to the engines) would delay it. Each backend checks the sha256 of the
    files it does load (`check_sha256`).
    """
    for name, meta in manifest.data.get("files", {}).items():
        path = manifest.root / name
        if not path.is_file():
            raise PackageError(f"package {str(manifest.root)!r} is missing {name!r}, which its manifest "
                               f"lists; recompile the package (or restore the file)")
        size = path.stat().st_size
        if size != meta["bytes"]:
            _changed(manifest, name, f"{size} bytes, manifest says {meta['bytes']}")


def check_sha256(manifest: Manifest, name: str, data: bytes | None = None) -> None:
    """The file (or the bytes read from it) has the sha256 its manifest records."""
    meta = manifest.data.get("files", {}).get(name)
    if meta is None:
        return
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_of(manifest.root / name)
    if digest != meta["sha256"]:
        _changed(manifest, name, "sha256 differs")


def _changed(manifest: Manifest, name: str, how: str) -> None:
    raise PackageError(f"{name!r} in package {str(manifest.root)!r} does not match its manifest ({how}); "
                       f"the file was changed after compile: recompile the package")
