"""The artifact: a package directory written atomically, and its manifest.

A package is built in a hidden temporary sibling of OUT and renamed into place only when complete,
so OUT is always either the previous good package or the new complete one, never a half-written
mix: an exception, Ctrl-C or a failed check deletes the temporary directory and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import onnx

import trtcompile
from trtcompile.errors import UserError
from trtcompile.onnx_io import ONNX_DTYPE_NAMES
from trtcompile.runtime.manifest import MANIFEST, SCHEMA_VERSION, sha256_of

MODEL_FILE = "model.onnx"
PROFILE_FILE = "profile.yaml"
TOKENIZER_DIR = "tokenizer"



def check_destination(out: Path) -> None:
    """OUT may be absent, empty, or a previous package (replaced atomically); nothing else."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output {str(out)!r} is a file, not a package directory",
                        hint="choose another -o/--output directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(f"output {str(out)!r} exists and is not a trtcompile package; refusing to replace it",
                        hint="choose another -o/--output directory, or remove that one")


class PackageWriter:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        check_destination(self.out)
        self.tmp: Path | None = None
        self.committed = False
        self._recorded: dict[str, dict] = {}

    def __enter__(self) -> "PackageWriter":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed and self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, name: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_manifest(self, manifest: dict) -> None:
        """Record every file with its size and sha256, then the manifest itself (still temporary)."""
        files = {}
        for path in sorted(self.tmp.rglob("*")):
            rel = path.relative_to(self.tmp).as_posix()
            if path.is_file() and rel != MANIFEST:
                size = path.stat().st_size
                known = self._recorded.get(rel)  # written again after verification: hash once
                files[rel] = known if known and known["bytes"] == size else {"bytes": size, "sha256": sha256_of(path)}
        self._recorded = files
        manifest["files"] = files
        with open(self.tmp / MANIFEST, "w") as f:
            json.dump(manifest, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())

    def commit(self) -> Path:
        """Swap the finished package into place (the old one, if any, is removed only afterwards)."""
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            os.rename(self.out, old / "pkg")
        try:
            os.rename(self.tmp, self.out)
        except OSError:
            if old is not None:  # put the previous package back
                os.rename(old / "pkg", self.out)
            raise
        self.committed = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out


def tensor_specs(model: onnx.ModelProto, value_ranges: dict) -> tuple[list[dict], list[dict]]:
    """Manifest inputs/outputs from the final graph: name, dtype, symbolic shape, value range."""
    init = {i.name for i in model.graph.initializer}

    def spec(v):
        tt = v.type.tensor_type
        shape = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                 for d in tt.shape.dim]
        entry = {"name": v.name, "dtype": ONNX_DTYPE_NAMES.get(tt.elem_type, str(tt.elem_type)), "shape": shape}
        if v.name in value_ranges:
            entry["value_range"] = list(value_ranges[v.name])
        return entry

    return ([spec(v) for v in model.graph.input if v.name not in init], [spec(v) for v in model.graph.output])


def new_manifest(model: onnx.ModelProto, meta: dict, *, reports: list, warnings: list[str],
                 timings: dict) -> dict:
    from trtcompile.onnx_io import op_histogram
    from trtcompile.profiles import parse_profile

    inputs, outputs = tensor_specs(model, meta.get("value_ranges", {}))
    profile = parse_profile(meta["profile"], origin=meta.get("profile_origin", "profile"))
    src = meta["source"]
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "trtcompile_version": trtcompile.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"name": src["name"], "source": src["spec"], "source_kind": src["kind"], "task": src["task"],
                  "source_sha256": src["sha256"], "config": src.get("config") or {}},
        "model_file": MODEL_FILE,
        "inputs": inputs,
        "outputs": outputs,
        "profile": {"origin": meta.get("profile_origin"), "file": PROFILE_FILE},
        "buckets": [b.to_dict() for b in profile.buckets],
        "precision": meta.get("precision", "fp32"),
        "export": meta.get("export", {}),
        "passes": [r.to_dict() if hasattr(r, "to_dict") else r for r in reports],
        "warnings": list(warnings),
        "op_histogram": op_histogram(model),
        "engines": [],
        "build": {"timings_s": timings},
    }
    manifest.update(meta.get("manifest_extra") or {})
    return manifest


def write_model_files(pkg: PackageWriter, model: onnx.ModelProto, meta: dict) -> None:
    """model.onnx, profile.yaml, and the tokenizer (for `generate` and text calibration)."""
    import yaml

    from trtcompile.onnx_io import save_model

    save_model(model, pkg.path(MODEL_FILE))
    pkg.path(PROFILE_FILE).write_text(
        f"# profile used for this package ({meta.get('profile_origin')})\n" + yaml.safe_dump(meta["profile"], sort_keys=False))
    tok = meta["source"].get("tokenizer_dir")
    if tok:
        from trtcompile.export.hf import TOKENIZER_FILES

        for name in TOKENIZER_FILES:
            if (Path(tok) / name).is_file():
                shutil.copy2(Path(tok) / name, pkg.path(f"{TOKENIZER_DIR}/{name}"))
