"""Which backend a package runs on, and why: engine checks, the lean runtime, load(backend="auto").

The rules are applied to an Environment (TensorRT kind and version, GPU), so the decision is run
here with the real `tensorrt_lean` module's kind and version and a stated GPU; nothing stands in
for TensorRT. The end-to-end fallbacks load a real package on this machine, where the GPU (or,
in a child process with the imports blocked, TensorRT itself) is really missing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from trtcompile import runtime
from trtcompile.runtime.engine_check import (Environment, engine_mismatch, probe_environment, tensorrt_kind,
                                             unavailable_reason)
from trtcompile.runtime.engine_layout import EngineLayoutError, engine_layout, engines_by_file
from trtcompile.runtime.manifest import Manifest, PackageError
from trtcompile.runtime.shapes import Bucket, TensorSpec, bucket_for

BUCKETS = [Bucket("short", {"batch": (1, 1, 4), "sequence": (1, 8, 16)}),
           Bucket("long", {"batch": (1, 2, 4), "sequence": (17, 32, 64)})]


def entry(file="engines/model.plan", buckets=("short", "long"), version="11.4.0.106", **flags) -> dict:
    return {"file": file, "tensorrt_version": version, "compute_capability": "9.0",
            "device_name": "NVIDIA H100 80GB HBM3", "sha256": "", "bytes": 0,
            "profiles": [{"bucket": b, "index": i} for i, b in enumerate(buckets)],
            "build_flags": {"version_compatible": False, "exclude_lean_runtime": False,
                            "hardware_compatibility": "none", **flags}}


def full(version="11.4.0.106", cc="9.0") -> Environment:
    return Environment(tensorrt_kind="full", tensorrt_version=version, compute_capability=cc, device_name="NVIDIA A10G")


@pytest.fixture(scope="module")
def lean_env() -> Environment:
    """The lean runtime installed here, on a stated Hopper GPU (there is none here)."""
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt_lean is not installed (pip install tensorrt-lean-cu13)")
    return Environment(tensorrt_kind=tensorrt_kind(trt), tensorrt_version=trt.__version__, compute_capability="9.0",
                       device_name="NVIDIA H100 80GB HBM3")


def manifest_with(engines, tmp_path=Path("/nonexistent")) -> Manifest:
    return Manifest(tmp_path, {"schema_version": 1, "inputs": [{"name": "x", "dtype": "float32",
                                                                "shape": ["batch", "sequence", 8]}],
                               "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", "sequence", 4]}],
                               "buckets": [b.to_dict() for b in BUCKETS], "engines": engines, "build": {}})


# --- the rules --------------------------------------------------------------------------------

def test_engine_matching_the_machine_is_accepted():
    assert engine_mismatch(entry(), full()) is None
    assert engine_mismatch(entry(), full("11.4.0.200")) is None  # same release, other build number


def test_other_tensorrt_version_says_what_to_rebuild():
    msg = engine_mismatch(entry(), full("11.5.0.10"))
    assert "11.4.0.106" in msg and "11.5.0.10" in msg and "engines/model.plan" in msg
    assert "trtcompile build" in msg and "--runtime lean" in msg


def test_version_compatible_engines_run_later_in_their_major_and_from_10_on_11():
    vc = entry(version_compatible=True)
    assert engine_mismatch(vc, full("11.6.1.2")) is None
    assert "at or above 11.4.0.106" in engine_mismatch(vc, full("11.3.0.1"))
    assert "11.x" in engine_mismatch(vc, full("12.0.0.1"))
    # TensorRT 11.1 "Engine Compatibility": version-compatible TensorRT 10 engines run on 11.
    assert engine_mismatch(entry(version="10.15.1.29", version_compatible=True), full("11.4.0.106")) is None
    assert engine_mismatch(entry(version="10.15.1.29"), full("11.4.0.106")) is not None  # not without the flag
    msg = engine_mismatch(entry(version="9.3.0.1", version_compatible=True), full("11.4.0.106"))
    assert "9.x" in msg and "11.4.0.106" in msg


def test_excluded_lean_runtime_needs_its_version_or_its_library():
    e = entry(version_compatible=True, exclude_lean_runtime=True)
    assert engine_mismatch(e, full()) is None
    msg = engine_mismatch(e, full("11.5.0.1"))
    assert "--exclude-lean-runtime" in msg and "TRTCOMPILE_LEAN_LIBRARY" in msg and "11.4.0.106" in msg
    with_library = Environment(tensorrt_kind="full", tensorrt_version="11.5.0.1", compute_capability="9.0",
                               lean_library="/opt/trt-11.4/libnvinfer_lean.so.11")
    assert engine_mismatch(e, with_library) is None  # loaded through Runtime.load_runtime


def test_other_gpu_generation_is_rejected_unless_built_ampere_plus():
    msg = engine_mismatch(entry(), full(cc="8.6"))
    assert "9.0" in msg and "8.6" in msg and "NVIDIA A10G" in msg and "ampere_plus" in msg
    ampere = entry(hardware_compatibility="ampere_plus")
    assert engine_mismatch(ampere, full(cc="8.6")) is None
    assert "Ampere or newer" in engine_mismatch(ampere, full(cc="7.5"))


def test_lean_runtime_refuses_plain_engines_before_deserializing(lean_env):
    msg = engine_mismatch(entry(version=lean_env.tensorrt_version), lean_env)
    assert "lean runtime" in msg and "--runtime lean" in msg and "trtcompile[tensorrt]" in msg
    vc = entry(version=lean_env.tensorrt_version, version_compatible=True)
    assert engine_mismatch(vc, lean_env) is None


def test_probe_names_the_missing_gpu_here():
    env = probe_environment()
    if env.problem is None:
        pytest.skip("TensorRT and a GPU are present")
    assert env.problem and ("CUDA" in env.problem or "TensorRT" in env.problem or "tensorrt" in env.problem)


# --- bucket -> engine and profile ---------------------------------------------------------------

def test_shared_engine_gives_each_bucket_its_profile_and_one_file():
    manifest = manifest_with([entry(buckets=("short", "long"))])
    layout = engine_layout(manifest)
    assert {b: (s.file, s.profile) for b, s in layout.items()} == {"short": ("engines/model.plan", 0),
                                                                   "long": ("engines/model.plan", 1)}
    assert list(engines_by_file(layout)) == ["engines/model.plan"]  # deserialized once, two contexts
    inputs = [TensorSpec("x", "float32", ["batch", "sequence", 8])]
    for sequence, profile in [(5, 0), (16, 0), (17, 1), (64, 1)]:
        bucket = bucket_for(manifest.buckets, inputs, {"x": np.zeros((2, sequence, 8), np.float32)})
        assert layout[bucket.name].profile == profile


def test_per_bucket_and_old_entries_map_to_profile_zero():
    per_bucket = [entry("engines/short.plan", ("short",)), entry("engines/long.plan", ("long",))]
    old = [{k: v for k, v in e.items() if k != "profiles"} | {"bucket": e["profiles"][0]["bucket"]}
           for e in per_bucket]
    for engines in (per_bucket, old):
        layout = engine_layout(manifest_with(engines))
        assert {b: (s.file, s.profile) for b, s in layout.items()} == {"short": ("engines/short.plan", 0),
                                                                       "long": ("engines/long.plan", 0)}


@pytest.mark.parametrize("engines, message", [
    ([entry(buckets=("short",))], "no engine for bucket(s) ['long']"),
    ([entry(buckets=("short", "long", "huge"))], "bucket 'huge', which the package does not define"),
    ([entry("a.plan", ("short", "long")), entry("b.plan", ("long",))], "bucket 'long' has two engine profiles"),
    ([entry() | {"profiles": [{"bucket": "short", "index": 0}, {"bucket": "long", "index": 0}]}], "same profile"),
])
def test_inconsistent_engine_entries_are_package_errors(engines, message):
    with pytest.raises(EngineLayoutError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        engine_layout(manifest_with(engines))
    assert message.split("(")[0].split("'")[0] in unavailable_reason(manifest_with(engines), full())


def test_unavailable_reason_orders_layout_environment_engines(lean_env):
    assert "no TensorRT engines" in unavailable_reason(manifest_with([]), lean_env)
    assert "lean runtime" in unavailable_reason(manifest_with([entry(version=lean_env.tensorrt_version)]), lean_env)
    vc = entry(version=lean_env.tensorrt_version, version_compatible=True)
    assert unavailable_reason(manifest_with([vc]), lean_env) is None
    no_gpu = Environment(problem="no CUDA GPU: cudaGetDeviceCount found 0 devices", tensorrt_kind="lean",
                         tensorrt_version=lean_env.tensorrt_version)
    assert unavailable_reason(manifest_with([vc]), no_gpu) == no_gpu.problem


# --- load(backend="auto") end to end -------------------------------------------------------------

def _tiny_package(root: Path) -> Path:
    """x [batch, sequence, 8] -- MatMul(W 8x4) --> y, compiled from an .onnx file (no export)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from trtcompile.compile import compile_package

    rng = np.random.default_rng(0)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 4])],
                              [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    root.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(root / "m.onnx"))
    (root / "p.yaml").write_text("inputs:\n  x: [batch, sequence, 8]\nbuckets:\n"
                                 "  short: {batch: [1, 1, 4], sequence: [1, 8, 16]}\n"
                                 "  long: {batch: [1, 2, 4], sequence: [17, 32, 64]}\n")
    compile_package(str(root / "m.onnx"), root / "pkg", profile_path=root / "p.yaml")
    return root / "pkg"


def with_engines(package: Path, *entries: dict) -> Path:
    """The package as a GPU build would leave it: plan files listed in the manifest with their hashes.

    The plan bytes are not an engine; the decisions below never reach deserialization here (no GPU;
    on a machine with one, deserialization fails and that is the reason given).
    """
    data = json.loads((package / "manifest.json").read_text())
    data["engines"] = []
    for e in entries:
        plan = b"not a TensorRT plan " + e["file"].encode()
        (package / e["file"]).parent.mkdir(exist_ok=True)
        (package / e["file"]).write_bytes(plan)
        e = dict(e, sha256=hashlib.sha256(plan).hexdigest(), bytes=len(plan))
        data["engines"].append(e)
        data["files"][e["file"]] = {"bytes": len(plan), "sha256": e["sha256"]}
    (package / "manifest.json").write_text(json.dumps(data))
    return package


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return _tiny_package(tmp_path_factory.mktemp("fallback"))


def _feeds():
    return {"x": np.random.default_rng(1).standard_normal((2, 5, 8)).astype(np.float32)}


def test_package_without_engines_runs_on_onnx_runtime_without_a_warning(package):
    with warnings.catch_warnings():
        warnings.simplefilter("error", runtime.BackendFallbackWarning)
        with runtime.load(package) as model:
            assert model.backend_name == "onnxruntime"


def test_auto_falls_back_with_one_warning_that_says_why(package, tmp_path):
    import shutil

    copy = with_engines(Path(shutil.copytree(package, tmp_path / "pkg")), entry())
    with pytest.warns(runtime.BackendFallbackWarning) as caught:
        model = runtime.load(copy)
    assert len(caught) == 1
    message = str(caught[0].message)
    reason = runtime.tensorrt_unavailable_reason(model.manifest)
    assert reason and reason in message and "ONNX Runtime" in message
    with model, runtime.load(package, backend="onnxruntime") as reference:
        assert model.backend_name == "onnxruntime"
        np.testing.assert_array_equal(model.run(_feeds())["y"], reference.run(_feeds())["y"])
    with pytest.raises(PackageError, match="backend 'tensorrt' cannot run") as info:  # explicit: no fallback
        runtime.load(copy, backend="tensorrt")
    assert reason in str(info.value)


def test_auto_falls_back_when_tensorrt_is_missing(package, tmp_path):
    # A child process where neither tensorrt nor tensorrt_lean can be imported: the real import fails.
    import shutil

    copy = with_engines(Path(shutil.copytree(package, tmp_path / "pkg")), entry(version_compatible=True))
    code = (
        "import sys, warnings\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorrt', 'tensorrt_lean', 'tensorrt_libs', 'tensorrt_lean_libs'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from trtcompile import runtime\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        f"    model = runtime.load({str(copy)!r})\n"
        "print(model.backend_name)\n"
        "print(len(caught))\n"
        "print(caught[0].message)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    backend, count, message = out.stdout.strip().splitlines()[-3:]
    assert backend == "onnxruntime" and count == "1"
    assert "neither tensorrt nor tensorrt_lean imports" in message and "trtcompile[tensorrt]" in message


def test_auto_rejects_options_neither_backend_takes(package):
    with pytest.raises(TypeError, match="unknown backend option"):
        runtime.load(package, cuda_graph=False)
    with runtime.load(package, threads=1, cuda_graphs=False) as model:  # each backend gets its own options
        assert model.backend_name == "onnxruntime"


def test_spinning_option_reaches_the_ort_session(package):
    from trtcompile.runtime.ort_backend import DEFAULT_SPIN_US

    def entry_of(model, key):
        return model.backend.session.get_session_options().get_session_config_entry(key)

    with runtime.load(package, threads=1) as model:  # the default: a bounded spin, during runs only
        assert entry_of(model, "session.intra_op.allow_spinning") == "1"
        assert entry_of(model, "session.intra_op.spin_duration_us") == str(DEFAULT_SPIN_US)
        assert entry_of(model, "session.force_spinning_stop") == "1"
    with runtime.load(package, threads=1, spinning=False) as model:  # auto passes it to ONNX Runtime too
        assert entry_of(model, "session.intra_op.allow_spinning") == "0"
    for bad in (-1, 2.5, "fast"):
        with pytest.raises(ValueError, match="spinning=.* microseconds"):
            runtime.load(package, backend="onnxruntime", spinning=bad)


def test_weights_go_on_huge_pages_unless_told_not_to(package):
    with runtime.load(package, backend="onnxruntime") as model:  # runtime/huge_pages.py; the default
        assert model.backend.huge_pages.enabled is True
        assert model.backend.huge_pages.report().startswith("huge pages: ")
    with runtime.load(package, backend="onnxruntime", huge_pages="background") as model:  # after load returns
        assert model.backend.huge_pages.background is True and model.backend.huge_pages.wait(timeout=60)
    with runtime.load(package, threads=1, huge_pages=False) as model:  # auto passes it to ONNX Runtime too
        assert model.backend.huge_pages.enabled is False
        assert model.backend.huge_pages.report() == "huge pages: off (huge_pages=False)"


def test_inspect_shows_engines_buckets_and_memory_per_bucket(package, tmp_path):
    import shutil

    from trtcompile.inspect import describe

    shared = entry() | {"profiles": [{"bucket": "short", "index": 0, "context_memory_bytes": 3 << 20},
                                     {"bucket": "long", "index": 1, "context_memory_bytes": 5 << 20}]}
    copy = with_engines(Path(shutil.copytree(package, tmp_path / "pkg")), shared)
    text = describe(copy)
    assert "engines/model.plan" in text and "short (profile 0), long (profile 1)" in text
    assert "full runtime only" in text
    # x [4,16,8] + y [4,16,4] float32 = 2048 + 1024 B; at sequence 64: 8192 + 4096 B.
    assert "short        device I/O 3.0 KiB  pinned 3.0 KiB  activations 3.0 MiB" in text
    assert "long         device I/O 12.0 KiB  pinned 12.0 KiB  activations 5.0 MiB" in text
    assert "weights   engines/model.plan" in text and "once however many buckets it serves" in text
