"""Engine building: real builds where TensorRT and a GPU exist, everything checkable without them here.

The `tensorrt`-marked tests build engines from a tiny ONNX model with the real builder, run them
through the TensorRT backend and compare with ONNX Runtime; they skip with the reason from
`engine_unavailable_reason()`. The rest check settings, profiles, progress and, statically, that
every TensorRT name the builder code uses exists (in tensorrt_lean where it has the type, else
in a list reviewed against NVIDIA/TensorRT's Python bindings source).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from trt_conformance import attribute_chains, missing_in, module_uses, receiver_uses, source_of

from trtcompile.build import build_engines, engine_unavailable_reason
from trtcompile.build import engine as engine_module
from trtcompile.build import progress as progress_module
from trtcompile.build.engine import engine_file, profile_shapes, validate_settings
from trtcompile.build.progress import PhaseTracker, make_monitor, status_line
from trtcompile.errors import UserError
from trtcompile.runtime.shapes import Bucket, TensorSpec
from trtcompile.settings import BuildSettings

REASON = engine_unavailable_reason()
needs_builder = pytest.mark.skipif(REASON is not None, reason=f"cannot build TensorRT engines here: {REASON}")

INPUTS = [TensorSpec("x", "float32", ["batch", "sequence", 8]), TensorSpec("ids", "int64", ["batch", "sequence"])]
OUTPUTS = [TensorSpec("y", "float32", ["batch", "sequence", 4]), TensorSpec("h", "float32", ["batch", "sequence", 8])]
BUCKETS = [Bucket("short", {"batch": (1, 2, 4), "sequence": (1, 8, 16)}),
           Bucket("long", {"batch": (1, 2, 4), "sequence": (17, 32, 64)})]


def tiny_onnx(path: Path, extra_op: str | None = None) -> Path:
    """
        x [B,S,8] ─ MatMul(W 8x4) ─ Add(b) ─ Relu ─┐
        ids [B,S] ─ Cast(float) ─ Unsqueeze(-1) ─ Mul(0.01) ─ Add ─▶ y [B,S,4]
        x ─ Tanh ─▶ h [B,S,8]          (extra_op: h goes through an op TensorRT does not know)
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([-1], np.int64), "axes"),
             numpy_helper.from_array(np.array(0.01, np.float32), "scale")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["xwb"]),
             helper.make_node("Relu", ["xwb"], ["r"]), helper.make_node("Cast", ["ids"], ["idf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["idf", "axes"], ["id3"]),
             helper.make_node("Mul", ["id3", "scale"], ["ids_s"]),
             helper.make_node("Add", ["r", "ids_s"], ["y"]),
             helper.make_node("Tanh", ["x"], ["t" if extra_op else "h"])]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["t"], ["h"]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", 8]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", 4]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", "sequence", 8])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # what ONNX Runtime 1.31 loads
    onnx.save(model, str(path))
    return path


def feeds_for(batch: int, sequence: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((batch, sequence, 8)).astype(np.float32),
            "ids": rng.integers(0, 1000, (batch, sequence)).astype(np.int64)}


# --- real builds (TensorRT + GPU) -------------------------------------------------------------

def manifest_for(out: Path, entries: list[dict]):
    from trtcompile.runtime.manifest import Manifest

    return Manifest(out, {"schema_version": 1, "inputs": [s.to_dict() for s in INPUTS],
                          "outputs": [s.to_dict() for s in OUTPUTS], "buckets": [b.to_dict() for b in BUCKETS],
                          "engines": entries, "build": {}})


# Shapes in an order that alternates buckets and repeats shapes (graphs captured, then replayed).
CALLS = [(1, 5), (3, 16), (2, 40), (3, 16), (2, 40), (3, 16), (2, 40), (4, 64), (1, 5), (1, 5)]


def check_against_onnx_runtime(runner, model_path: Path) -> None:
    from helpers import ort_run

    for batch, sequence in CALLS:
        feeds = feeds_for(batch, sequence, seed=sequence)
        got, want = runner.run(feeds), ort_run(str(model_path), feeds)
        for name in ("y", "h"):
            assert got[name].shape == want[name].shape
            # TensorRT may run FP32 matmuls in TF32 (its default), hence not 1e-6.
            np.testing.assert_allclose(got[name], want[name], atol=2e-2, rtol=2e-2, err_msg=name)


@pytest.mark.tensorrt
@needs_builder
def test_shared_engine_has_a_profile_per_bucket_and_matches_onnx_runtime(tmp_path):
    import tensorrt

    from trtcompile.runtime import Model
    from trtcompile.runtime.tensorrt_backend import TensorRTBackend

    model_path = tiny_onnx(tmp_path / "model.onnx")
    out = tmp_path / "pkg"
    events: list[str] = []
    entries = build_engines(model_path, INPUTS, BUCKETS, BuildSettings(optimization_level=1), out,
                            on_progress=events.append)

    assert len(entries) == 1  # one engine, the weights once
    e = entries[0]
    plan = (out / e["file"]).read_bytes()
    assert e["file"] == "engines/model.plan" and "bucket" not in e
    assert [(p["bucket"], p["index"]) for p in e["profiles"]] == [("short", 0), ("long", 1)]
    assert all(isinstance(p["context_memory_bytes"], int) for p in e["profiles"])
    assert e["bytes"] == len(plan) and e["sha256"] == hashlib.sha256(plan).hexdigest()
    assert e["tensorrt_version"] == tensorrt.__version__ and e["compute_capability"].count(".") == 1
    assert e["build_flags"]["engines"] == "shared" and e["build_flags"]["version_compatible"] is False
    assert events and all(line.startswith("engine 'short+long'") for line in events)

    manifest = manifest_for(out, entries)
    backend = TensorRTBackend(manifest)
    with Model(manifest, backend) as runner:
        assert list(backend.engines) == ["engines/model.plan"]  # deserialized once
        short, long = backend.session("short"), backend.session("long")
        assert (short.profile, long.profile) == (0, 1) and short.context is not long.context
        assert short.context.active_optimization_profile == 0 and long.context.active_optimization_profile == 1
        check_against_onnx_runtime(runner, model_path)
        # (3, 16) and (2, 40) alternate between the buckets: each is captured on its 2nd call, replayed on its 3rd.
        assert short.graphs.stats["replays"] >= 1 and long.graphs.stats["replays"] >= 1


@pytest.mark.tensorrt
@needs_builder
def test_per_bucket_engines_and_timing_cache_reuse(tmp_path):
    from trtcompile.runtime import Model
    from trtcompile.runtime.tensorrt_backend import TensorRTBackend

    model_path = tiny_onnx(tmp_path / "model.onnx")
    out, cache = tmp_path / "pkg", tmp_path / "caches" / "timing.cache"
    settings = BuildSettings(optimization_level=1, timing_cache=cache, engines="per-bucket")
    entries = build_engines(model_path, INPUTS, BUCKETS, settings, out)

    assert [(e["file"], e["bucket"], e["profiles"][0]["index"]) for e in entries] == [
        ("engines/short.plan", "short", 0), ("engines/long.plan", "long", 0)]
    assert [e["timing_cache"] for e in entries] == ["new", "reused"]  # the 2nd engine reuses the 1st's timings
    assert (out / "timing.cache").stat().st_size > 0 and cache.read_bytes() == (out / "timing.cache").read_bytes()
    with Model(manifest_for(out, entries), TensorRTBackend(manifest_for(out, entries))) as runner:
        check_against_onnx_runtime(runner, model_path)

    # The saved timing cache is picked up by the next build, shared this time.
    again = build_engines(model_path, INPUTS, BUCKETS, BuildSettings(optimization_level=1, timing_cache=cache),
                          tmp_path / "pkg2")
    assert again[0]["timing_cache"] == "reused" and (tmp_path / "pkg2" / "engines" / "model.plan").is_file()


@pytest.mark.tensorrt
@needs_builder
def test_lean_runtime_round_trip(tmp_path):
    # Built for --runtime lean (version-compatible), run on tensorrt_lean in a child process.
    pytest.importorskip("tensorrt_lean", reason="tensorrt_lean is not installed (pip install tensorrt-lean-cu13)")
    from helpers import ort_run

    model_path = tiny_onnx(tmp_path / "model.onnx")
    out = tmp_path / "pkg"
    entries = build_engines(model_path, INPUTS, BUCKETS, BuildSettings(optimization_level=1, runtime="lean"), out)
    assert entries[0]["build_flags"]["version_compatible"] is True and entries[0]["build_flags"]["runtime"] == "lean"
    (out / "entries.json").write_text(json.dumps(entries))
    feeds = feeds_for(2, 40, seed=3)
    np.savez(tmp_path / "feeds.npz", **feeds)
    code = (
        "import json, sys, numpy as np\n"
        "sys.path[:0] = [%r, %r]\n"
        "from test_engine import manifest_for\n"
        "from trtcompile.runtime.tensorrt_backend import TensorRTBackend\n"
        "from trtcompile.runtime.shapes import bucket_for\n"
        "m = manifest_for(__import__('pathlib').Path(%r), json.loads(open(%r).read()))\n"
        "backend = TensorRTBackend(m, runtime='lean')\n"
        "assert backend.trt.__name__ == 'tensorrt_lean', backend.trt.__name__\n"
        "feeds = dict(np.load(%r))\n"
        "out = backend.run(feeds, bucket_for(m.buckets, m.inputs, feeds))\n"
        "np.savez(%r, **out)\n"
        "backend.close()\n"
    ) % (str(Path(__file__).parent), str(Path(__file__).parent.parent), str(out), str(out / "entries.json"), str(tmp_path / "feeds.npz"),
         str(tmp_path / "out.npz"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    got, want = dict(np.load(tmp_path / "out.npz")), ort_run(str(model_path), feeds)
    for name in ("y", "h"):
        np.testing.assert_allclose(got[name], want[name], atol=2e-2, rtol=2e-2, err_msg=name)


@pytest.mark.tensorrt
@needs_builder
def test_a_changed_plan_is_refused_before_it_runs(tmp_path):
    from trtcompile.runtime.manifest import PackageError
    from trtcompile.runtime.tensorrt_backend import TensorRTBackend

    out = tmp_path / "pkg"
    entries = build_engines(tiny_onnx(tmp_path / "model.onnx"), INPUTS, BUCKETS, BuildSettings(optimization_level=1),
                            out)
    plan = bytearray((out / "engines/model.plan").read_bytes())
    plan[-1] ^= 0xFF
    (out / "engines/model.plan").write_bytes(bytes(plan))
    with pytest.raises(PackageError, match="does not match its manifest sha256"):
        TensorRTBackend(manifest_for(out, entries))


@pytest.mark.tensorrt
@needs_builder
def test_parser_errors_name_the_node_and_say_what_to_do(tmp_path):
    model_path = tiny_onnx(tmp_path / "model.onnx", extra_op="NotARealOp")
    with pytest.raises(UserError, match="NotARealOp") as info:
        build_engines(model_path, INPUTS, BUCKETS[:1], BuildSettings(), tmp_path / "pkg")
    assert "fix:" in str(info.value)
    assert not (tmp_path / "pkg" / "engines" / "short.plan").exists()


# --- without TensorRT ---------------------------------------------------------------------------

def test_the_tiny_model_is_valid_and_runs_in_onnx_runtime(tmp_path):
    # The TensorRT tests above cannot run on CPU machines; this keeps their model from rotting.
    import onnx

    from helpers import ort_run

    path = tiny_onnx(tmp_path / "model.onnx")
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    out = ort_run(str(path), feeds_for(3, 16))
    assert out["y"].shape == (3, 16, 4) and out["h"].shape == (3, 16, 8)


def test_unavailable_reason_says_why_and_build_refuses_with_it(tmp_path):
    if REASON is None:
        pytest.skip("TensorRT and a GPU are present: engines can be built")
    assert "TensorRT" in REASON or "CUDA" in REASON
    with pytest.raises(UserError, match="cannot build TensorRT engines here") as info:
        build_engines(tiny_onnx(tmp_path / "m.onnx"), INPUTS, BUCKETS, BuildSettings(), tmp_path / "pkg")
    assert REASON in str(info.value) and "fix:" in str(info.value)


def test_reason_without_tensorrt_names_the_package():
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "tensorrt" in REASON and "pip install tensorrt" in REASON
    else:
        pytest.skip("tensorrt imports here")


@pytest.mark.parametrize("settings, message", [
    (BuildSettings(runtime="lean", version_compatible=False), "lean runtime runs only version-compatible"),
    (BuildSettings(runtime="dispatch"), "'dispatch' is unknown"),
    (BuildSettings(engines="one"), "engine layout 'one' is unknown"),
    (BuildSettings(optimization_level=6), "optimization level 6"),
    (BuildSettings(workspace_mib=0), "workspace of 0 MiB"),
    (BuildSettings(hardware_compatibility="turing_plus"), "'turing_plus' is unknown"),
    (BuildSettings(exclude_lean_runtime=True), "only applies to version-compatible"),
    (BuildSettings(max_aux_streams=-1), "aux streams -1"),
])
def test_bad_settings_are_user_errors(settings, message):
    with pytest.raises(UserError, match=message):
        validate_settings(settings)


def test_runtime_decides_whether_engines_are_version_compatible():
    assert BuildSettings().builds_version_compatible is False
    assert BuildSettings(runtime="lean").builds_version_compatible is True
    assert BuildSettings(version_compatible=True).builds_version_compatible is True
    flags = engine_module.build_flags(BuildSettings(runtime="lean", engines="per-bucket"))
    assert (flags["runtime"], flags["engines"], flags["version_compatible"]) == ("lean", "per-bucket", True)
    validate_settings(BuildSettings(runtime="lean", exclude_lean_runtime=True))  # lean implies version-compatible


def test_cli_options_map_onto_build_settings():
    from trtcompile.cli import build as build_command
    from trtcompile.cli import build_settings

    def parse(*args):
        return build_settings(**build_command.make_context("build", ["model.onnx", "-o", "out", *args]).params)

    for args, expected in [((), ("full", "shared", None, False)),
                           (("--runtime", "lean"), ("lean", "shared", None, True)),
                           (("--engines", "per-bucket", "--version-compatible"), ("full", "per-bucket", True, True))]:
        s = parse(*args)
        assert (s.runtime, s.engines, s.version_compatible, s.builds_version_compatible) == expected
    with pytest.raises(UserError, match="lean runtime runs only version-compatible"):
        validate_settings(parse("--runtime", "lean", "--no-version-compatible"))


def test_engine_groups_follow_the_layout():
    assert [(f, [b.name for b in g]) for f, g in engine_module.engine_groups(BUCKETS, "shared")] == [
        ("engines/model.plan", ["short", "long"])]
    assert [(f, [b.name for b in g]) for f, g in engine_module.engine_groups(BUCKETS, "per-bucket")] == [
        ("engines/short.plan", ["short"]), ("engines/long.plan", ["long"])]


def test_settings_that_are_fine_pass(tmp_path):
    validate_settings(BuildSettings())
    validate_settings(BuildSettings(optimization_level=5, workspace_mib=1024, hardware_compatibility="ampere_plus",
                                    version_compatible=True, exclude_lean_runtime=True, max_aux_streams=0,
                                    timing_cache=tmp_path / "new.cache"))


def test_profile_shapes_come_from_the_bucket():
    bucket = Bucket("b", {"batch": (1, 2, 4), "sequence": (1, 64, 128), "past": (0, 16, 32)})
    specs = [TensorSpec("ids", "int64", ["batch", "sequence"]), TensorSpec("mask", "int64", ["batch", "sequence+past"]),
             TensorSpec("pixels", "float32", ["batch", 3, 224, 224])]
    assert profile_shapes(specs, bucket) == {
        "ids": ((1, 1), (2, 64), (4, 128)),
        "mask": ((1, 1), (2, 80), (4, 160)),
        "pixels": ((1, 3, 224, 224), (2, 3, 224, 224), (4, 3, 224, 224)),
    }


def test_profile_errors_name_bucket_input_and_dimension():
    with pytest.raises(UserError, match="bucket 'b' gives no range for dimension 'sequence' of input 'ids'"):
        profile_shapes([TensorSpec("ids", "int64", ["batch", "sequence"])], Bucket("b", {"batch": (1, 1, 2)}))
    with pytest.raises(UserError, match="min <= opt <= max"):
        profile_shapes([TensorSpec("ids", "int64", ["batch"])], Bucket("b", {"batch": (4, 2, 8)}))


def test_engine_files_are_safe_relative_paths():
    assert engine_file("short") == "engines/short.plan"
    assert engine_file("a/b c") == "engines/a_b_c.plan"


def test_importing_build_does_not_import_tensorrt():
    code = ("import sys, trtcompile.build\n"
            "print([m for m in ('tensorrt', 'tensorrt_lean', 'torch', 'onnx') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- progress -----------------------------------------------------------------------------------

def test_phase_tracker_follows_nested_phases():
    tracker = PhaseTracker()
    assert tracker.start("Building", None, 3) == 0
    assert tracker.start("Tactics", "Building", 10) == 1
    assert tracker.step("Tactics", 4) == (5, 10)
    assert tracker.finish("Tactics") == 10
    assert tracker.step("Building", 0) == (1, 3)
    assert tracker.finish("Building") == 3 and tracker.active == {}


def test_progress_monitor_subclasses_the_real_tensorrt_base():
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt_lean is not installed (pip install tensorrt-lean-cu13)")
    lines: list[str] = []
    monitor = make_monitor(trt, "short", status_line(lines.append))
    assert isinstance(monitor, trt.IProgressMonitor)
    monitor.phase_start("Building engine", None, 2)
    monitor.phase_start("Tactic selection", "Building engine", 4)
    assert monitor.step_complete("Tactic selection", 0) is True
    monitor.phase_finish("Tactic selection")
    assert lines == ["engine 'short': Building engine 0/2", "engine 'short': Tactic selection 0/4",
                     "engine 'short': Tactic selection 1/4", "engine 'short': Tactic selection 4/4"]


def test_ctrl_c_in_progress_cancels_the_build():
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt_lean is not installed (pip install tensorrt-lean-cu13)")

    def interrupt(*args):
        raise KeyboardInterrupt

    monitor = make_monitor(trt, "short", interrupt)
    monitor.phase_start("Building engine", None, 2)  # cannot cancel here: remembered instead
    assert monitor.cancelled and monitor.step_complete("Building engine", 0) is False


# --- the TensorRT names the builder uses --------------------------------------------------------

# Names given to builder objects in build/, and their classes in the Python bindings.
BUILD_RECEIVERS = {"builder": "Builder", "config": "IBuilderConfig", "network": "INetworkDefinition",
                   "parser": "OnnxParser", "profile": "IOptimizationProfile", "error": "ParserError",
                   "runtime": "Runtime", "engine": "ICudaEngine"}
# Not in tensorrt_lean (builder side); each was checked against NVIDIA/TensorRT's bindings source
# (python/src/infer/pyCore.cpp, pyGraph.cpp, python/src/parsers/pyOnnx.cpp, TensorRT 11). A new
# use fails test_builder_names_are_reviewed until it is checked there and added here.
REVIEWED_BUILDER_API = {
    ("Builder",), ("OnnxParser",),
    ("Builder", "create_network"), ("Builder", "create_builder_config"), ("Builder", "create_optimization_profile"),
    ("Builder", "build_serialized_network"),
    ("IBuilderConfig", "builder_optimization_level"), ("IBuilderConfig", "set_memory_pool_limit"),
    ("IBuilderConfig", "hardware_compatibility_level"), ("IBuilderConfig", "set_flag"), ("IBuilderConfig", "get_flag"),
    ("IBuilderConfig", "max_aux_streams"), ("IBuilderConfig", "add_optimization_profile"),
    ("IBuilderConfig", "create_timing_cache"), ("IBuilderConfig", "set_timing_cache"),
    ("IBuilderConfig", "get_timing_cache"), ("IBuilderConfig", "progress_monitor"),
    ("INetworkDefinition", "num_inputs"), ("INetworkDefinition", "get_input"),
    ("OnnxParser", "parse_from_file"), ("OnnxParser", "num_errors"), ("OnnxParser", "get_error"),
    ("ParserError", "node"), ("ParserError", "node_name"), ("ParserError", "node_operator"), ("ParserError", "desc"),
}


def builder_uses() -> set[tuple[str, ...]]:
    uses = set()
    for module in (engine_module, progress_module):
        chains = attribute_chains(source_of(module))
        uses |= module_uses(chains, "trt") | receiver_uses(chains, BUILD_RECEIVERS)
    return uses


def test_builder_names_in_tensorrt_lean_exist_there():
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt_lean is not installed (pip install tensorrt-lean-cu13)")
    uses = builder_uses()
    in_lean = {u for u in uses if hasattr(trt, u[0])}
    assert {("BuilderFlag", "VERSION_COMPATIBLE"), ("BuilderFlag", "EXCLUDE_LEAN_RUNTIME"),
            ("MemoryPoolType", "WORKSPACE"), ("HardwareCompatibilityLevel", "AMPERE_PLUS"),
            ("IProgressMonitor",), ("IOptimizationProfile", "set_shape")} <= in_lean
    assert not missing_in(trt, in_lean), f"not in tensorrt_lean {trt.__version__}: {missing_in(trt, in_lean)}"


def test_builder_names_are_reviewed():
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt_lean is not installed (pip install tensorrt-lean-cu13)")
    unreviewed = {u for u in builder_uses() if not hasattr(trt, u[0]) and not u[0].startswith("__")}
    new = sorted(unreviewed - REVIEWED_BUILDER_API)
    assert not new, f"check these against NVIDIA's bindings source, then list them: {new}"
    assert ("Builder", "build_serialized_network") in unreviewed  # the scan sees builder calls at all


def test_no_precision_flag_or_calibrator_is_used():
    # TensorRT 11 removed these (networks are strongly typed); tensorrt_lean 10.x would still list
    # some of them, so this holds whatever version the conformance test runs against.
    removed = {"FP16", "BF16", "INT8", "FP8", "STRONGLY_TYPED", "EXPLICIT_BATCH", "int8_calibrator"}
    used = {name for use in builder_uses() for name in use}
    assert not used & removed, f"removed in TensorRT 11: {sorted(used & removed)}"


def test_manifest_entry_fields_are_json():
    flags = engine_module.build_flags(BuildSettings(), tf32=True)
    assert json.loads(json.dumps(flags)) == flags and flags["tf32"] is True
