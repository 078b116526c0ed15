"""The manifest's one schema: whatever is wrong with a manifest ends in PackageError naming the key,
from `runtime.load` and from `trtcompile inspect` alike, and no path leads outside the package.

A manifest fuzz: every key of a real package's manifest (and of a causal LM's generation section)
deleted, nulled and given another JSON type, and every path pointed outside the package.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from trtcompile import runtime
from trtcompile.inspect import describe
from trtcompile.runtime.manifest import PackageError, parse

DATA = Path(__file__).parent.parent / "data"

# Keys a package cannot do without: deleting, nulling or retyping any of them must be refused.
REQUIRED = {
    "schema_version", "model", "model.name", "model.source", "model.source_kind", "model.task",
    "model.source_sha256", "model.config", "model_file", "inputs", "inputs.0", "inputs.0.name", "inputs.0.dtype",
    "inputs.0.shape", "outputs", "outputs.0", "outputs.0.name", "outputs.0.dtype", "outputs.0.shape", "buckets",
    "buckets.0", "buckets.0.name", "buckets.0.dims", "buckets.0.dims.batch", "precision", "files",
    "files.model.onnx", "files.model.onnx.bytes", "files.model.onnx.sha256", "engines",
    "engines.0.bucket", "engines.0.file", "files.engines/short.plan",
}
# A package without engines is fine, a broken engine entry is not.
REQUIRED_UNLESS_DELETED = {"engines.0"}
REQUIRED_GENERATION = {"generation.past_inputs", "generation.present_outputs", "generation.num_kv_heads",
                       "generation.head_dim"}


@pytest.fixture(scope="module")
def package(tiny_bert_package, tmp_path_factory) -> Path:
    """A tiny BERT package, plus an engine entry (its plan file listed in `files`, as a build writes it)."""
    out = tmp_path_factory.mktemp("schema") / "bert"
    shutil.copytree(tiny_bert_package, out)
    plan = b"not a real plan: the onnxruntime backend never reads it"
    (out / "engines").mkdir()
    (out / "engines" / "short.plan").write_bytes(plan)
    data = json.loads((out / "manifest.json").read_text())
    data["files"]["engines/short.plan"] = {"bytes": len(plan), "sha256": hashlib.sha256(plan).hexdigest()}
    data["engines"] = [{"bucket": "short", "file": "engines/short.plan", "tensorrt_version": "11.0",
                        "compute_capability": "9.0", "build_flags": {}, "bytes": len(plan), "build_seconds": 1.0}]
    (out / "manifest.json").write_text(json.dumps(data))
    return out


def key_paths(value, prefix=()):
    """Every key path of a JSON value as a tuple: ('model', 'name'), ('inputs', 0, 'shape'), ...
    (of a list, its first element only)."""
    items = value.items() if isinstance(value, dict) else enumerate(value[:1]) if isinstance(value, list) else []
    for key, child in items:
        yield prefix + (key,)
        yield from key_paths(child, prefix + (key,))


def dotted(path: tuple) -> str:
    return ".".join(str(k) for k in path)


def other_type(value):
    """A value of another JSON type than `value`."""
    if isinstance(value, bool):
        return "yes"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return 7
    if isinstance(value, list):
        return {"a": 1}
    return [1, 2]


def mutations(data):
    for path in key_paths(data):
        for how in ("delete", "null", "retype"):
            mutated = copy.deepcopy(data)
            node = mutated
            for k in path[:-1]:
                node = node[k]
            key = path[-1]
            if how == "delete":
                del node[key]
            elif how == "null":
                node[key] = None
            else:
                node[key] = other_type(node[key])
            yield dotted(path), how, mutated


def outcome(pkg: Path, mutated) -> str:
    """'ok', or 'PackageError: ...'; any other exception fails the test."""
    (pkg / "manifest.json").write_text(json.dumps(mutated))
    try:
        describe(pkg)
        with runtime.load(pkg, backend="onnxruntime") as model:
            feeds = {t.name: np.ones((1, 4), np.int64) for t in model.inputs}
            model.run(feeds)
    except PackageError as exc:
        return f"PackageError: {exc}"
    except runtime.InputError as exc:  # a mutated input spec the call no longer fits: still clear
        return f"InputError: {exc}"
    return "ok"


def test_every_key_deleted_nulled_or_retyped_is_a_package_error(package, tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    data = json.loads((package / "manifest.json").read_text())
    refused = set()
    for path, how, mutated in mutations(data):
        result = outcome(pkg, mutated)  # raises on anything but PackageError/InputError
        if result.startswith("PackageError"):
            refused.add(path)
            assert path.split(".")[-1] in result or path.split(".")[0] in result, (path, how, result)
        elif path in REQUIRED or (path in REQUIRED_UNLESS_DELETED and how != "delete"):
            pytest.fail(f"{how} {path!r} was accepted: {result}")
    assert REQUIRED <= refused


def test_generation_section_keys(checkpoint, tmp_path):
    """A causal LM's generation section, through the same schema (pure parse: no model needed)."""
    from decoder_packages import compiled_decoder

    pkg = compiled_decoder("llama", tmp_path)
    data = json.loads((pkg / "manifest.json").read_text())
    parse(data)  # the real one is valid
    for path, how, mutated in mutations({"generation": data["generation"]}):
        candidate = {**data, "generation": mutated.get("generation")} if "generation" in mutated else \
            {k: v for k, v in data.items() if k != "generation"}
        try:
            parse(candidate)
        except PackageError as exc:
            assert path.split(".")[-1] in str(exc) or "generation" in str(exc), (path, how, exc)
            continue
        assert path not in REQUIRED_GENERATION, f"{how} {path!r} was accepted"


@pytest.mark.parametrize("where, value", [
    ("model_file", "../outside/model.onnx"),
    ("model_file", "/etc/passwd"),
    ("files", "../../../../etc/passwd"),
    ("files", "/etc/passwd"),
    ("engine", "../outside/short.plan"),
    ("tokenizer", "../outside"),
    ("profile", "../outside/profile.yaml"),
])
def test_paths_pointing_outside_are_refused(package, tmp_path, where, value):
    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("model.onnx", "profile.yaml"):
        shutil.copy(package / name, outside / name)
    data = json.loads((pkg / "manifest.json").read_text())
    if where == "model_file":
        data["model_file"] = value
    elif where == "files":
        data["files"][value] = {"bytes": 1, "sha256": "0" * 64}
    elif where == "engine":
        data["engines"][0]["file"] = value
    elif where == "tokenizer":
        data["tokenizer"] = value
    else:
        data["profile"]["file"] = value
    (pkg / "manifest.json").write_text(json.dumps(data))
    for read in (lambda: runtime.load(pkg, backend="onnxruntime"), lambda: describe(pkg)):
        with pytest.raises(PackageError, match=r"outside the package|does not list"):
            read()


def test_symlink_leading_out_is_refused(package, tmp_path):
    """Same bytes, same sha256, but the file lives outside the package: refused."""
    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    shutil.copy(package / "model.onnx", tmp_path / "elsewhere.onnx")
    (pkg / "model.onnx").unlink()
    os.symlink(tmp_path / "elsewhere.onnx", pkg / "model.onnx")
    with pytest.raises(PackageError, match=r"'model.onnx' .* leads outside the package"):
        runtime.load(pkg, backend="onnxruntime")


def test_model_file_must_be_listed_and_files_required(package, tmp_path):
    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    data = json.loads((pkg / "manifest.json").read_text())
    unlisted = {**data, "files": {k: v for k, v in data["files"].items() if k != "model.onnx"}}
    (pkg / "manifest.json").write_text(json.dumps(unlisted))
    with pytest.raises(PackageError, match=r"'model_file' names 'model.onnx', which 'files' does not list"):
        runtime.load(pkg, backend="onnxruntime")
    (pkg / "manifest.json").write_text(json.dumps({k: v for k, v in data.items() if k != "files"}))
    with pytest.raises(PackageError, match=r"'files' is missing"):
        runtime.load(pkg, backend="onnxruntime")


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", r"is not UTF-8"),
    (b"[1, 2]", r"the manifest is a list, not a JSON object"),
    (b"\"text\"", r"the manifest is a string, not a JSON object"),
    (b"{\"schema_version\": true}", r"schema_version True"),
    (b"[" * 100000, r"not valid JSON|nested too deeply"),
])
def test_manifest_that_is_not_an_object(package, tmp_path, content, message):
    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    (pkg / "manifest.json").write_bytes(content)
    for read in (lambda: runtime.load(pkg, backend="onnxruntime"), lambda: describe(pkg)):
        with pytest.raises(PackageError, match=message):
            read()


def test_unlisted_external_data_is_refused(package, tmp_path):
    """A model.onnx.data the manifest does not list could hold anything: the backend refuses it."""
    pkg = tmp_path / "pkg"
    shutil.copytree(package, pkg)
    (pkg / "model.onnx.data").write_bytes(b"\0" * 16)
    with pytest.raises(PackageError, match=r"'model.onnx.data' .* not listed"):
        runtime.load(pkg, backend="onnxruntime")


def test_shared_engine_entries_with_profiles(package):
    """One engine serving several buckets (`--engines shared`): each profile names a bucket of the package."""
    data = json.loads((package / "manifest.json").read_text())
    data["engines"] = [{"file": "engines/short.plan", "profiles": [{"bucket": "short", "index": 0},
                                                                  {"bucket": "long", "index": 1}]}]
    parse(data)
    for profiles, message in [([{"bucket": "huge", "index": 0}], r"serves bucket 'huge', not one of the buckets"),
                              ([{"bucket": "short", "index": -1}], r"'engines\[0\].profiles\[0\].index' is -1"),
                              ([{"bucket": "short"}], r"'engines\[0\].profiles\[0\].index' is missing"),
                              ("short", r"'engines\[0\].profiles' is a string")]:
        data["engines"][0]["profiles"] = profiles
        with pytest.raises(PackageError, match=message):
            parse(data)
    del data["engines"][0]["profiles"]
    with pytest.raises(PackageError, match=r"'engines\[0\].profiles' is missing"):
        parse(data)
