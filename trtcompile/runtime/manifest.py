"""The package manifest: its one schema, reading it, and checking it against the files beside it.

Shared by the runtime and the compiler: `PackageWriter` validates what it writes with `parse`,
`trtcompile inspect` and `runtime.load` read through `read_manifest`, so all three agree on what a
manifest is. Whatever is wrong with one (not UTF-8, not JSON, not an object, a required key
missing, null or of the wrong type, a path that leaves the package) is a `PackageError` naming the
key, never a KeyError/TypeError later.

Paths are confined: every file a manifest names is a relative path inside the package (no
absolute path, no `..`, no symlink leading out), and the model file and every engine are listed in
`files` with their size and sha256, so nothing is loaded that was not checked.

Imports nothing but the standard library and numpy.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

from trtcompile.runtime.shapes import Bucket, TensorSpec, dim_terms

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", "fp8")
# Element types the runtime can hand to and take from numpy (bfloat16 has no numpy type).
NUMPY_DTYPES = ("float32", "float16", "float64", "int8", "uint8", "int32", "int64", "bool")
_RECOMPILE = "recompile the package"


class PackageError(RuntimeError):
    """A package that cannot be loaded as it is: the message says which file and what to rebuild."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- the schema --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileEntry:
    bytes: int
    sha256: str


@dataclass(frozen=True)
class ModelSection:
    name: str
    source: str
    source_kind: str
    task: str
    source_sha256: str
    config: dict


@dataclass(frozen=True)
class Schema:
    """The typed content of a manifest, parsed once."""

    model: ModelSection
    model_file: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    buckets: list[Bucket]
    precision: str
    files: dict[str, FileEntry]
    engines: list[dict]  # each has at least "bucket" and "file" (listed in files)
    profile_file: str | None = None
    tokenizer: str | None = None
    generation: dict | None = None
    extra: dict = field(default_factory=dict)


class _Reader:
    """Typed access to a JSON object that raises PackageError naming the key path."""

    def __init__(self, origin: str):
        self.origin = origin

    def fail(self, key: str, problem: str):
        raise PackageError(f"{self.origin}: {key!r} {problem}; {_RECOMPILE} with this trtcompile")

    def get(self, obj: dict, key: str, where: str, kinds, *, required: bool = True, nullable: bool = False):
        path = f"{where}.{key}" if where else key
        if key not in obj:
            if required:
                self.fail(path, "is missing")
            return None
        value = obj[key]
        if value is None:
            if required or not nullable:
                self.fail(path, "is null")
            return None
        self.check(value, path, kinds)
        return value

    def check(self, value, path: str, kinds) -> None:
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        # JSON has no int/bool distinction in Python's eyes: True is an int, and must not pass as one.
        ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
        if not ok:
            names = " or ".join(_JSON_NAMES.get(k, k.__name__) for k in kinds)
            self.fail(path, f"is {_JSON_NAMES.get(type(value), type(value).__name__)} {_short(value)}, expected {names}")

    def rel_path(self, value, path: str) -> str:
        """A path inside the package: relative, no `..`, no drive, no backslash tricks."""
        self.check(value, path, str)
        pure = PurePosixPath(value)
        if (not value or value.startswith(("/", "\\")) or PureWindowsPath(value).drive or "\\" in value
                or ".." in pure.parts or "\0" in value):
            self.fail(path, f"is {value!r}, a path outside the package (paths must be relative, without '..')")
        return pure.as_posix()


_JSON_NAMES = {dict: "an object", list: "a list", str: "a string", int: "an integer", float: "a number",
               bool: "a boolean", type(None): "null"}


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else ""
    return f"({text[:40]})" if text else ""


def _tensor(r: _Reader, d, where: str) -> TensorSpec:
    r.check(d, where, dict)
    name = r.get(d, "name", where, str)
    dtype = r.get(d, "dtype", where, str)
    if dtype not in NUMPY_DTYPES:
        r.fail(f"{where}.dtype", f"is {dtype!r}, which the runtime cannot pass through numpy "
                                 f"(one of {', '.join(NUMPY_DTYPES)}); recompile with --keep-io-fp32")
    shape = r.get(d, "shape", where, list)
    for i, dim in enumerate(shape):
        r.check(dim, f"{where}.shape[{i}]", (int, str))
        if (isinstance(dim, int) and dim < 0) or dim == "":
            r.fail(f"{where}.shape[{i}]", f"is {dim!r}, expected a size >= 0 or a dimension name")
    vr = r.get(d, "value_range", where, list, required=False, nullable=True)
    if vr is not None:
        if len(vr) != 2:
            r.fail(f"{where}.value_range", f"has {len(vr)} entries, expected [low, high)")
        for i, v in enumerate(vr):
            r.check(v, f"{where}.value_range[{i}]", (int, float))
        if not vr[0] < vr[1]:
            r.fail(f"{where}.value_range", f"is {vr}, expected low < high")
    return TensorSpec(name, dtype, list(shape), tuple(vr) if vr else None)


def _bucket(r: _Reader, d, where: str) -> Bucket:
    r.check(d, where, dict)
    name = r.get(d, "name", where, str)
    dims = r.get(d, "dims", where, dict)
    parsed = {}
    for dim, rng in dims.items():
        key = f"{where}.dims.{dim}"
        r.check(rng, key, list)
        if len(rng) != 3:
            r.fail(key, f"has {len(rng)} entries, expected [min, opt, max]")
        for i, v in enumerate(rng):
            r.check(v, f"{key}[{i}]", int)
        if not 0 <= rng[0] <= rng[1] <= rng[2]:
            r.fail(key, f"is {rng}, expected 0 <= min <= opt <= max")
        parsed[dim] = tuple(rng)
    return Bucket(name, parsed)


def parse(data, origin: str = MANIFEST) -> Schema:
    """Validate a manifest's content; raise PackageError naming the first key that is wrong."""
    r = _Reader(origin)
    if not isinstance(data, dict):
        raise PackageError(f"{origin}: the manifest is {_JSON_NAMES.get(type(data), type(data).__name__)}, "
                           f"not a JSON object; {_RECOMPILE}")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise PackageError(f"{origin} has schema_version {version!r}, this trtcompile reads {SCHEMA_VERSION}; "
                           f"{_RECOMPILE} with this version")
    m = r.get(data, "model", "", dict)
    model = ModelSection(*(r.get(m, k, "model", str) for k in ("name", "source", "source_kind", "task",
                                                                "source_sha256")),
                         config=r.get(m, "config", "model", dict))
    files = {}
    for name, meta in r.get(data, "files", "", dict).items():
        key = f"files.{name}"
        rel = r.rel_path(name, key)
        r.check(meta, key, dict)
        size = r.get(meta, "bytes", key, int)
        digest = r.get(meta, "sha256", key, str)
        if size < 0 or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            r.fail(key, f"has bytes {size} and sha256 {digest[:70]!r}; expected a size >= 0 and 64 hex digits")
        files[rel] = FileEntry(size, digest)

    def listed(rel: str, key: str) -> str:
        if rel not in files:
            r.fail(key, f"names {rel!r}, which 'files' does not list with its size and sha256")
        return rel

    model_file = listed(r.rel_path(r.get(data, "model_file", "", str), "model_file"), "model_file")
    inputs = [_tensor(r, t, f"inputs[{i}]") for i, t in enumerate(r.get(data, "inputs", "", list))]
    outputs = [_tensor(r, t, f"outputs[{i}]") for i, t in enumerate(r.get(data, "outputs", "", list))]
    if not inputs or not outputs:
        r.fail("inputs" if not inputs else "outputs", "is empty")
    buckets = [_bucket(r, b, f"buckets[{i}]") for i, b in enumerate(r.get(data, "buckets", "", list))]
    if not buckets:
        r.fail("buckets", "is empty")
    names = [b.name for b in buckets]
    if len(set(names)) != len(names):
        r.fail("buckets", f"has duplicate names {names}")
    used = {t for spec in inputs for d in spec.shape if isinstance(d, str) for t in dim_terms(d)
            if t != "?" and not t.lstrip("-").isdigit()}
    for i, b in enumerate(buckets):
        missing = sorted(used - set(b.dims))
        if missing:
            r.fail(f"buckets[{i}].dims", f"gives no range for dimension {missing[0]!r}, which the inputs use")
    precision = r.get(data, "precision", "", str)
    if precision not in PRECISIONS:
        r.fail("precision", f"is {precision!r}, expected one of {', '.join(PRECISIONS)}")
    engines = []
    for i, e in enumerate(r.get(data, "engines", "", list)):
        key = f"engines[{i}]"
        r.check(e, key, dict)
        listed(r.rel_path(r.get(e, "file", key, str), f"{key}.file"), f"{key}.file")
        # One engine per bucket ({"bucket": ...}, as first written) or one engine serving several
        # buckets, one optimization profile each ({"profiles": [{"bucket", "index"}]}); which
        # bucket maps to which (engine, profile) is checked by runtime/engine_layout.py.
        profiles = r.get(e, "profiles", key, list, required="bucket" not in e)
        served = [r.get(e, "bucket", key, str)] if profiles is None else []
        for j, prof in enumerate(profiles or []):
            where = f"{key}.profiles[{j}]"
            r.check(prof, where, dict)
            served.append(r.get(prof, "bucket", where, str))
            if r.get(prof, "index", where, int) < 0:
                r.fail(f"{where}.index", f"is {prof['index']}, expected >= 0")
            r.get(prof, "context_memory_bytes", where, int, required=False, nullable=True)
        for bucket in served:
            if bucket not in names:
                r.fail(f"{key}", f"serves bucket {bucket!r}, not one of the buckets {names}")
        r.get(e, "sha256", key, str, required=False)
        r.get(e, "build_flags", key, dict, required=False)
        r.get(e, "bytes", key, int, required=False)
        r.get(e, "build_seconds", key, (int, float), required=False)
        engines.append(e)
    build = r.get(data, "build", "", dict, required=False)
    if build is not None:
        r.get(build, "engines_skipped", "build", str, required=False)
        for i, problem in enumerate(r.get(build, "tensorrt_import_check", "build", list, required=False) or []):
            r.check(problem, f"build.tensorrt_import_check[{i}]", str)
        for stage, seconds in (r.get(build, "timings_s", "build", dict, required=False) or {}).items():
            r.check(seconds, f"build.timings_s.{stage}", (int, float))
    profile = r.get(data, "profile", "", dict, required=False) or {}
    profile_file = profile.get("file")
    if profile_file is not None:
        profile_file = r.rel_path(profile_file, "profile.file")
    r.get(profile, "origin", "profile", str, required=False, nullable=True)
    tokenizer = r.get(data, "tokenizer", "", str, required=False)
    tokenizer = r.rel_path(tokenizer, "tokenizer") if tokenizer is not None else None
    generation = _generation(r, data)
    _reported(r, data)
    return Schema(model=model, model_file=model_file, inputs=inputs, outputs=outputs, buckets=buckets,
                  precision=precision, files=files, engines=engines, profile_file=profile_file,
                  tokenizer=tokenizer, generation=generation)


def _generation(r: _Reader, data: dict) -> dict | None:
    gen = r.get(data, "generation", "", dict, required=False)
    if gen is None:
        return None
    for key in ("past_inputs", "present_outputs"):
        for i, name in enumerate(r.get(gen, key, "generation", list)):
            r.check(name, f"generation.{key}[{i}]", str)
    if len(gen["past_inputs"]) != len(gen["present_outputs"]):
        r.fail("generation.present_outputs", "has not as many names as generation.past_inputs")
    for key in ("num_kv_heads", "head_dim"):
        if r.get(gen, key, "generation", int) < 1:
            r.fail(f"generation.{key}", f"is {gen[key]}, expected >= 1")
    for key in ("input_ids", "attention_mask", "position_ids", "logits"):
        r.get(gen, key, "generation", str, required=False)
    for key in ("vocab_size", "pad_token_id", "bos_token_id", "max_context"):
        r.get(gen, key, "generation", int, required=False, nullable=True)
    eos = r.get(gen, "eos_token_id", "generation", (int, list), required=False, nullable=True)
    for i, e in enumerate(eos if isinstance(eos, list) else []):
        r.check(e, f"generation.eos_token_id[{i}]", int)
    tok = r.get(gen, "tokenizer_dir", "generation", str, required=False, nullable=True)
    if tok is not None:
        r.rel_path(tok, "generation.tokenizer_dir")
    return gen


def _reported(r: _Reader, data: dict) -> None:
    """The report sections `trtcompile inspect` prints: optional, but well-formed when present."""
    for i, p in enumerate(r.get(data, "passes", "", list, required=False) or []):
        key = f"passes[{i}]"
        r.check(p, key, dict)
        r.get(p, "name", key, str)
        for k in ("matched", "declined", "nodes_before", "nodes_after"):
            r.get(p, k, key, int)
        r.get(p, "seconds", key, (int, float))
        for k in ("matches", "declines"):
            for j, item in enumerate(r.get(p, k, key, list, required=False) or []):
                r.check(item, f"{key}.{k}[{j}]", dict)
                r.get(item, "node", f"{key}.{k}[{j}]", str)
                if k == "declines":
                    r.get(item, "reason", f"{key}.{k}[{j}]", str)
        for j, note in enumerate(r.get(p, "notes", key, list, required=False) or []):
            r.check(note, f"{key}.notes[{j}]", str)
    for i, w in enumerate(r.get(data, "warnings", "", list, required=False) or []):
        r.check(w, f"warnings[{i}]", str)
    for op, count in (r.get(data, "op_histogram", "", dict, required=False) or {}).items():
        r.check(count, f"op_histogram.{op}", int)
    acc = r.get(data, "accuracy", "", dict, required=False)
    if acc is not None:
        r.get(acc, "cases", "accuracy", list)
        r.get(acc, "backend", "accuracy", str)
        r.get(acc, "rule", "accuracy", str)
        for name, w in r.get(acc, "worst", "accuracy", dict).items():
            r.check(w, f"accuracy.worst.{name}", dict)
            r.get(w, "max_abs", f"accuracy.worst.{name}", (int, float))
            r.get(w, "min_cosine", f"accuracy.worst.{name}", (int, float))
    for k in ("trtcompile_version", "created"):
        r.get(data, k, "", str, required=False, nullable=True)


# --- a manifest beside its files -----------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """A package's manifest beside its files; `data` is the raw JSON object.

    `read_manifest` (the loader, `inspect`) builds it validated: `schema` holds the typed content
    and nothing below can hit a missing key. Built directly (`Manifest(root, data)`, as tests and
    in-memory tools do) it is taken as given.
    """

    root: Path
    data: dict
    schema: Schema | None = field(default=None, repr=False, compare=False)

    @classmethod
    def validated(cls, root: Path, data) -> "Manifest":
        return cls(root, data, parse(data, origin=str(Path(root) / MANIFEST)))

    @property
    def inputs(self) -> list[TensorSpec]:
        if self.schema is not None:
            return list(self.schema.inputs)
        return [TensorSpec.from_dict(d) for d in self.data["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        if self.schema is not None:
            return list(self.schema.outputs)
        return [TensorSpec.from_dict(d) for d in self.data["outputs"]]

    @property
    def buckets(self) -> list[Bucket]:
        if self.schema is not None:
            return list(self.schema.buckets)
        return [Bucket.from_dict(d) for d in self.data["buckets"]]

    @property
    def engines(self) -> list[dict]:
        return self.schema.engines if self.schema is not None else self.data.get("engines", [])

    @property
    def precision(self) -> str:
        return self.schema.precision if self.schema is not None else self.data.get("precision", "fp32")

    @property
    def model_file(self) -> str:
        return self.schema.model_file if self.schema is not None else self.data.get("model_file", "model.onnx")

    @property
    def files(self) -> dict[str, FileEntry]:
        if self.schema is not None:
            return self.schema.files
        return {k: FileEntry(v["bytes"], v["sha256"]) for k, v in self.data.get("files", {}).items()}

    def path(self, name: str) -> Path:
        """root/name, refused when it leads outside the package (`..`, absolute, or a symlink)."""
        rel = _Reader(str(Path(self.root) / MANIFEST)).rel_path(name, name)
        path = Path(self.root) / rel
        root = os.path.realpath(self.root)
        if os.path.commonpath([root, os.path.realpath(path)]) != root:
            raise PackageError(f"{rel!r} in package {str(self.root)!r} leads outside the package "
                               f"(a symlink to {os.path.realpath(path)!r}); {_RECOMPILE}")
        return path


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
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackageError(f"{str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                           f"{_RECOMPILE}") from exc
    except OSError as exc:
        raise PackageError(f"{str(path)!r} cannot be read: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PackageError(f"{str(path)!r} is not valid JSON ({exc}); {_RECOMPILE}") from exc
    except RecursionError as exc:
        raise PackageError(f"{str(path)!r} is nested too deeply to be a manifest; {_RECOMPILE}") from exc
    manifest = Manifest.validated(root, data)
    if check_files:
        check_package_files(manifest)
    return manifest


def check_package_files(manifest: Manifest) -> None:
    """Every file the manifest lists is inside the package and present with its recorded size.

    Cheap on purpose: a service loads packages at start-up, and hashing gigabytes it will never
    read (model.onnx next to the engines) would delay it. Each backend checks the sha256 of the
    files it does load (`check_sha256`).
    """
    for name, meta in manifest.files.items():
        path = manifest.path(name)
        if not path.is_file():
            raise PackageError(f"package {str(manifest.root)!r} is missing {name!r}, which its manifest "
                               f"lists; recompile the package (or restore the file)")
        size = path.stat().st_size
        if size != meta.bytes:
            _changed(manifest, name, f"{size} bytes, manifest says {meta.bytes}")
    for name in filter(None, (manifest.schema.tokenizer, manifest.schema.profile_file)):
        manifest.path(name)  # confined, even though not hashed as a whole


def check_sha256(manifest: Manifest, name: str, data: bytes | None = None) -> None:
    """The file (or the bytes read from it) has the sha256 its manifest records.

    A file the manifest does not list is refused when it exists (it could be anything); an unlisted
    name that does not exist (model.onnx.data of a small model) is fine.
    """
    meta = manifest.files.get(name)
    if meta is None:
        if data is not None or manifest.path(name).exists():
            raise PackageError(f"{name!r} in package {str(manifest.root)!r} is not listed in its manifest's "
                               f"'files', so it cannot be checked; {_RECOMPILE}")
        return
    digest = hashlib.sha256(data).hexdigest() if data is not None else sha256_of(manifest.path(name))
    if digest != meta.sha256:
        _changed(manifest, name, "sha256 differs")


def _changed(manifest: Manifest, name: str, how: str) -> None:
    raise PackageError(f"{name!r} in package {str(manifest.root)!r} does not match its manifest ({how}); "
                       f"the file was changed after compile: recompile the package")
