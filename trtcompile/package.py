"""The artifact: a package directory written atomically, and its manifest.

A package is built in a hidden temporary sibling of OUT (`.OUT.partial-*`) and swapped into place
only when complete, so OUT is always either the previous good package or the new complete one,
never a half-written mix: an exception, Ctrl-C or a failed check deletes the temporary directory
and nothing else.

The swap is one atomic `renameat2(RENAME_EXCHANGE)` on Linux (the old package ends up in the
temporary directory, which is then removed). Where the kernel or file system cannot exchange, the
old package is renamed aside (`.OUT.old-*/pkg`) and the new one renamed in; a crash between those
two renames is repaired by the next compile to OUT, which renames the old package back first.
Each temporary directory is flock()ed by the process using it, so a later compile removes exactly
the leftovers whose process is gone (a killed compile's `.partial-*` can hold a whole model).
Packages get the permissions the umask gives, like any other directory the user creates.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

import trtcompile
from trtcompile.errors import UserError
from trtcompile.onnx_io import ONNX_DTYPE_NAMES
from trtcompile.runtime.manifest import MANIFEST, SCHEMA_VERSION, PackageError, parse, sha256_of

if TYPE_CHECKING:
    from trtcompile.stage import StageRecord

MODEL_FILE = "model.onnx"
PROFILE_FILE = "profile.yaml"
TOKENIZER_DIR = "tokenizer"
# Models above this keep their weights in model.onnx.data: ONNX Runtime maps that file instead of
# parsing the weights out of a protobuf, and the package writer never holds two copies of them.
EXTERNAL_DATA_ABOVE = 128 << 20


def check_destination(out: Path) -> None:
    """OUT may be absent, empty, or a previous package (replaced atomically); nothing else."""
    if out.exists() and not out.is_dir():
        raise UserError(f"output {str(out)!r} is a file, not a package directory",
                        hint="choose another -o/--output directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise UserError(f"output {str(out)!r} exists and is not a trtcompile package; refusing to replace it",
                        hint="choose another -o/--output directory, or remove that one")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot create the package {str(out)!r}: {str(parent)!r} is not a writable directory",
                        hint="choose an -o/--output in a directory you can write to")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _lock(path: Path) -> int:
    """An open descriptor holding an exclusive flock on the directory (released when the process dies)."""
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _unowned(path: Path) -> bool:
    """No live process holds this leftover's lock (it was left by a killed or crashed compile)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also releases the probe's lock


def _leftovers(out: Path, kind: str) -> list[Path]:
    import glob

    return sorted(out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"), key=lambda p: p.stat().st_mtime)


def recover(out: Path) -> str | None:
    """Repair what a compile killed mid-swap left, and remove stale leftovers; say what was done."""
    if not out.parent.is_dir():
        return None
    done = None
    if not out.exists():  # killed between "old aside" and "new in": put the old package back
        for old in reversed(_leftovers(out, "old")):
            if (old / "pkg" / MANIFEST).is_file() and _unowned(old):
                os.rename(old / "pkg", out)
                done = f"restored the previous package {str(out)!r} that an interrupted compile had moved aside"
                break
    for stale in _leftovers(out, "partial") + _leftovers(out, "old"):
        if _unowned(stale):
            shutil.rmtree(stale, ignore_errors=True)
    return done


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # a libc without renameat2 (glibc < 2.28, musl < 1.2.3)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # file system without exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


class PackageWriter:
    def __init__(self, out: str | Path):
        self.out = Path(out)
        check_destination(self.out)
        self.tmp: Path | None = None
        self.committed = False
        self.recovered: str | None = None
        self._lock_fd: int | None = None
        self._recorded: dict[str, dict] = {}

    def __enter__(self) -> "PackageWriter":
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.recovered = recover(self.out)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        self._lock_fd = _lock(self.tmp)
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700 whatever the umask
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed and self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def path(self, name: str) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def write_manifest(self, manifest: dict) -> None:
        """Record every file with its size and sha256, check the manifest against the schema the
        runtime reads, then write it (still temporary)."""
        files = {}
        for path in sorted(self.tmp.rglob("*")):
            rel = path.relative_to(self.tmp).as_posix()
            if path.is_file() and rel != MANIFEST:
                size = path.stat().st_size
                known = self._recorded.get(rel)  # written again after verification: hash once
                files[rel] = known if known and known["bytes"] == size else {"bytes": size, "sha256": sha256_of(path)}
        self._recorded = files
        manifest["files"] = files
        text = json.dumps(manifest, indent=2, default=str)
        try:
            parse(json.loads(text), origin=f"the manifest being written for {str(self.out)!r}")
        except PackageError as exc:  # the writer and the reader disagree: a bug, not the user's
            raise AssertionError(str(exc)) from exc
        with open(self.tmp / MANIFEST, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def commit(self) -> Path:
        """Swap the finished package into place in one step; the old one is removed afterwards."""
        if self.out.exists() and exchange(self.tmp, self.out):
            self.committed = True
            # self.tmp now holds the previous package; still locked by us until __exit__.
            shutil.rmtree(self.tmp, ignore_errors=True)
            return self.out
        old = None
        if self.out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            old_fd = _lock(old)
            os.rename(self.out, old / "pkg")
        try:
            os.rename(self.tmp, self.out)
        except OSError:
            if old is not None:  # put the previous package back
                os.rename(old / "pkg", self.out)
            raise
        finally:
            if old is not None:
                os.close(old_fd)
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


def new_manifest(model: onnx.ModelProto, stage: "StageRecord", *, reports: list, warnings: list[str],
                 timings: dict) -> dict:
    """The manifest of the final graph and its stage record (validated by PackageWriter.write_manifest)."""
    from trtcompile.onnx_io import op_histogram

    inputs, outputs = tensor_specs(model, stage.value_ranges)
    src = stage.source
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "trtcompile_version": trtcompile.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"name": src.name, "source": src.spec, "source_kind": src.kind, "task": src.task,
                  "source_sha256": src.sha256, "config": src.config},
        "model_file": MODEL_FILE,
        "inputs": inputs,
        "outputs": outputs,
        "profile": {"origin": stage.profile.origin, "file": PROFILE_FILE},
        "buckets": [b.to_dict() for b in stage.profile.buckets],
        "precision": stage.precision,
        "export": stage.export,
        "passes": [r.to_dict() if hasattr(r, "to_dict") else r for r in reports],
        "warnings": list(warnings),
        "op_histogram": op_histogram(model),
        "engines": [],
        "build": {"timings_s": timings},
    }
    if src.weights:  # e.g. dequantized from a Q4_1 GGUF: the float reference is already rounded
        manifest["model"]["weights"] = src.weights
    manifest.update(stage.manifest_extra)
    return manifest


def write_model_files(pkg: PackageWriter, model: onnx.ModelProto, stage: "StageRecord") -> None:
    """model.onnx, profile.yaml, and the tokenizer (for `generate` and text calibration)."""
    import yaml

    from trtcompile.onnx_io import save_model

    save_model(model, pkg.path(MODEL_FILE), external_above=EXTERNAL_DATA_ABOVE, keep_weights=False)
    pkg.path(PROFILE_FILE).write_text(f"# profile used for this package ({stage.profile.origin})\n"
                                      + yaml.safe_dump(stage.profile.to_dict(), sort_keys=False))
    tok = stage.source.tokenizer_dir
    if tok:
        from trtcompile.export.hf import TOKENIZER_FILES

        for name in TOKENIZER_FILES:
            if (Path(tok) / name).is_file():
                shutil.copyfile(Path(tok) / name, pkg.path(f"{TOKENIZER_DIR}/{name}"))  # modes from the umask
