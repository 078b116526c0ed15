"""ONNX -> TensorRT engines: by default one `.plan` with one optimization profile per bucket.

`--engines shared` (the default) builds one engine whose optimization profiles are the buckets,
in bucket order; the runtime makes one execution context per profile, so the weights sit in GPU
memory once (an 8B model with prefill and decode buckets: 16 GB of FP16 weights, not 32), as
NVIDIA's own prefill/decode setups do. `--engines per-bucket` builds one independent engine per
bucket (each tuned and rebuilt alone, each with its own copy of the weights).

`--runtime lean` builds version-compatible engines, the only kind the lean runtime
(`tensorrt_lean`) deserializes; `--runtime full` (the default) builds plain ones.

Written from NVIDIA's TensorRT 11 Python API (NVIDIA/TensorRT python/src/infer/pyCore.cpp,
python/src/parsers/pyOnnx.cpp, samples/python/simple_progress_monitor), because the builder
cannot be installed where this was written. TensorRT 11 networks are always strongly typed:
precision comes from the ONNX graph (FP16 casts, Q/DQ), never from builder flags, so none of
the removed FP16/INT8 flags appear here.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import time
from pathlib import Path

from trtcompile.errors import UserError
from trtcompile.runtime.shapes import Bucket, TensorSpec
from trtcompile.settings import ENGINE_LAYOUTS, HARDWARE_COMPATIBILITY, TENSORRT_RUNTIMES, BuildSettings

ENGINE_DIR = "engines"
SHARED_ENGINE = f"{ENGINE_DIR}/model.plan"
TIMING_CACHE = "timing.cache"
NO_BUILDER_HINT = ("build the engines on a machine with a CUDA GPU and the full TensorRT (NVIDIA's wheels or "
                   "tar package): `trtcompile build` on the package's model.onnx there; without engines the "
                   "package still runs on ONNX Runtime")


def import_builder():
    """The full `tensorrt` module, with Builder and OnnxParser; ImportError when it is not installed."""
    import tensorrt as trt

    if not (hasattr(trt, "Builder") and hasattr(trt, "OnnxParser")):
        raise ImportError(f"the installed tensorrt ({getattr(trt, '__file__', '?')}) has no Builder/OnnxParser")
    return trt


def engine_unavailable_reason(device: int = 0) -> str | None:
    """Why no engine can be built here (no TensorRT builder, no CUDA GPU), or None when one can."""
    try:
        import_builder()
    except (ImportError, OSError) as exc:
        try:
            import tensorrt_lean  # noqa: F401

            lean = "; tensorrt_lean is installed, but it is a runtime only and cannot build engines"
        except (ImportError, OSError):
            lean = ""
        return (f"the TensorRT builder is not installed (import tensorrt: {exc}){lean}. `pip install tensorrt` "
                f"only installs a stub that downloads the libraries from NVIDIA's own package index, which "
                f"this machine cannot reach")
    from trtcompile.runtime.cuda import cuda_problem

    problem = cuda_problem(device)
    return f"TensorRT builds need a CUDA GPU: {problem}" if problem else None


def validate_settings(settings: BuildSettings) -> None:
    if not 0 <= settings.optimization_level <= 5:
        raise UserError(f"builder optimization level {settings.optimization_level} is out of range",
                        hint="use 0..5 (TensorRT's default is 3; higher builds slower, may run faster)")
    if settings.workspace_mib is not None and settings.workspace_mib <= 0:
        raise UserError(f"workspace of {settings.workspace_mib} MiB is not positive",
                        hint="give a size in MiB, or leave it unset to let TensorRT use the GPU's memory")
    if settings.hardware_compatibility not in HARDWARE_COMPATIBILITY:
        raise UserError(f"hardware compatibility {settings.hardware_compatibility!r} is unknown",
                        hint=f"use one of {', '.join(HARDWARE_COMPATIBILITY)}")
    if settings.runtime not in TENSORRT_RUNTIMES:
        raise UserError(f"TensorRT runtime {settings.runtime!r} is unknown", hint=f"use one of {', '.join(TENSORRT_RUNTIMES)}")
    if settings.engines not in ENGINE_LAYOUTS:
        raise UserError(f"engine layout {settings.engines!r} is unknown", hint=f"use one of {', '.join(ENGINE_LAYOUTS)}")
    if settings.runtime == "lean" and settings.version_compatible is False:
        raise UserError("--runtime lean with --no-version-compatible: the lean runtime runs only version-compatible "
                        "engines", hint="drop --no-version-compatible, or build for --runtime full")
    if settings.exclude_lean_runtime and not settings.builds_version_compatible:
        raise UserError("--exclude-lean-runtime only applies to version-compatible engines",
                        hint="add --runtime lean (or --version-compatible), or drop --exclude-lean-runtime")
    if settings.max_aux_streams is not None and settings.max_aux_streams < 0:
        raise UserError(f"max aux streams {settings.max_aux_streams} is negative", hint="use 0 or more")
    if settings.timing_cache is not None and Path(settings.timing_cache).is_dir():
        raise UserError(f"timing cache {str(settings.timing_cache)!r} is a directory",
                        hint="give a file path; it is created when missing")


def profile_shapes(inputs: list[TensorSpec], bucket: Bucket) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Each input's (min, opt, max) shape in this bucket, as TensorRT's optimization profile wants."""
    shapes = {}
    for spec in inputs:
        try:
            lo, opt, hi = (bucket.shape_of(spec.shape, i) for i in range(3))
        except KeyError as exc:
            raise UserError(f"bucket {bucket.name!r} gives no range for dimension {exc.args[0]!r} of input "
                            f"{spec.name!r} (shape {spec.shape})",
                            hint=f"add {exc.args[0]} to the bucket in the profile file") from None
        if any(d < 0 for d in lo) or any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
            raise UserError(f"bucket {bucket.name!r} gives input {spec.name!r} min {list(lo)}, opt {list(opt)}, "
                            f"max {list(hi)}", hint="each dimension needs 0 <= min <= opt <= max")
        shapes[spec.name] = (lo, opt, hi)
    return shapes


def engine_file(bucket_name: str) -> str:
    """Where a bucket's engine lives inside the package (relative, posix)."""
    return f"{ENGINE_DIR}/{re.sub(r'[^A-Za-z0-9_.-]', '_', bucket_name)}.plan"


def engine_groups(buckets: list[Bucket], layout: str) -> list[tuple[str, list[Bucket]]]:
    """(engine file, the buckets whose profiles it holds, in profile order) per engine to build."""
    if layout == "shared":
        return [(SHARED_ENGINE, list(buckets))]
    return [(engine_file(b.name), [b]) for b in buckets]


def build_flags(settings: BuildSettings, tf32: bool | None = None) -> dict:
    flags = {"optimization_level": settings.optimization_level, "workspace_mib": settings.workspace_mib,
             "hardware_compatibility": settings.hardware_compatibility, "runtime": settings.runtime,
             "engines": settings.engines, "version_compatible": settings.builds_version_compatible,
             "exclude_lean_runtime": settings.exclude_lean_runtime, "max_aux_streams": settings.max_aux_streams}
    if tf32 is not None:
        flags["tf32"] = tf32  # TensorRT's default: FP32 matmuls may run in TF32
    return flags


def _write_atomic(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _parse(trt, builder, logger, onnx_path: Path, inputs: list[TensorSpec]):
    from trtcompile.build.tensorrt_graph import graph_for_tensorrt, tensorrt_model
    from trtcompile.build.tensorrt_rules import import_problems

    network = builder.create_network(0)  # TensorRT 11: always strongly typed, no flags needed
    parser = trt.OnnxParser(network, logger)
    model, inlined = tensorrt_model(onnx_path)  # the static cache's ORT-only Ifs inlined
    problems = import_problems(model, base_dir=str(Path(onnx_path).parent))
    for problem in problems:  # the documented rules; the parser below has the last word
        sys.stderr.write(f"trtcompile: TensorRT import check: {problem}\n")
    with graph_for_tensorrt(onnx_path, model, inlined) as path:
        parsed = parser.parse_from_file(str(path))
    del model
    if not parsed:
        errors = [_parser_error_text(parser.get_error(i)) for i in range(parser.num_errors)]
        documented = "".join(f"\n    (documented rule) {p}" for p in problems)
        raise UserError(f"TensorRT {trt.__version__}'s ONNX parser rejected {str(onnx_path)!r}:\n    "
                        + "\n    ".join(errors or [logger.take_errors() or "no details"]) + documented,
                        hint="check that every op above is in TensorRT's ONNX operator support list; re-export "
                             "with another opset, or skip the pass that made the node (--disable-pass NAME)")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    expected = [s.name for s in inputs]
    if sorted(names) != sorted(expected):
        raise UserError(f"{str(onnx_path)!r} has inputs {names}, but the profile describes {expected}",
                        hint="make the profile's inputs match the model's, or re-export the model")
    return network, parser  # the parser owns the weights: keep it alive as long as the network


def _parser_error_text(error) -> str:
    try:
        where = f"node {error.node_name()!r} ({error.node_operator()}): " if error.node() >= 0 else ""
        return f"{where}{error.desc()}"
    except AttributeError:
        return str(error)


def _configure(trt, builder, settings: BuildSettings, shapes: dict, group: list[Bucket]):
    config = builder.create_builder_config()
    config.builder_optimization_level = settings.optimization_level
    if settings.workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    if settings.hardware_compatibility == "ampere_plus":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif settings.hardware_compatibility == "same_compute_capability":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
    if settings.builds_version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
        if settings.exclude_lean_runtime:
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
    if settings.max_aux_streams is not None:
        config.max_aux_streams = settings.max_aux_streams
    for expected, bucket in enumerate(group):
        _add_profile(builder, config, shapes[bucket.name], bucket, expected)
    return config


def _add_profile(builder, config, shapes: dict, bucket: Bucket, expected: int) -> None:
    """One optimization profile per bucket; its index must be the bucket's place in the engine."""
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        try:
            profile.set_shape(name, lo, opt, hi)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise UserError(f"TensorRT rejected the shapes of input {name!r} in bucket {bucket.name!r}: min {list(lo)}, "
                            f"opt {list(opt)}, max {list(hi)} ({exc})",
                            hint="check the bucket's min/opt/max in the profile file (each dimension needs "
                                 "0 <= min <= opt <= max, and static dimensions must match the model)") from None
    index = config.add_optimization_profile(profile)
    if index != expected:
        raise UserError(f"TensorRT rejected the optimization profile of bucket {bucket.name!r} (got index {index}, "
                        f"expected {expected}): {shapes}", hint="check the bucket's min/opt/max in the profile file")


def _context_memory(trt, logger, plan, count: int, version_compatible: bool) -> list[int | None]:
    """TensorRT's activation memory per profile, for `trtcompile inspect`; None where it cannot be read.

    Deserializes the plan once more on the build machine (it briefly holds the weights twice).
    """
    try:
        runtime = trt.Runtime(logger)
        if version_compatible:
            runtime.engine_host_code_allowed = True  # our own plan, just built
        engine = runtime.deserialize_cuda_engine(plan)
        if engine is None:
            logger.take_errors()
            return [None] * count
        sizes = [int(engine.get_device_memory_size_for_profile_v2(i)) for i in range(count)]
        del engine
        return sizes
    except (RuntimeError, TypeError, ValueError):
        logger.take_errors()
        return [None] * count


def _attach_timing_cache(config, cache_bytes: bytes, logger) -> str:
    """Reuse the timing cache; "reused", "new", or "discarded" (another GPU or TensorRT version)."""
    cache = config.create_timing_cache(cache_bytes)
    if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
        return "reused" if cache_bytes else "new"
    # A cache from another GPU or TensorRT version: start afresh rather than mix timings.
    logger.take_errors()
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    return "discarded"


def build_engines(onnx_path: Path, inputs: list[TensorSpec], buckets: list[Bucket], settings: BuildSettings,
                  out_dir: Path, on_progress=None) -> list[dict]:
    """Build the engines (`settings.engines`: one shared plan, or one per bucket) and `out_dir/timing.cache`.

    Returns the manifest's engine entries, each with its `profiles` ([{"bucket", "index",
    "context_memory_bytes"}]). on_progress(text) gets a one-line status such as
    "engine 'prefill+decode': Tactic selection 12/40", from TensorRT's build threads; without it,
    rich progress bars go to a terminal's stderr.
    Raises UserError when there is no builder or GPU here, or when parsing or building fails.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    validate_settings(settings)
    if not buckets:
        raise UserError("no buckets to build engines for", hint="give the profile at least one bucket")
    shapes = {b.name: profile_shapes(inputs, b) for b in buckets}
    groups = engine_groups(buckets, settings.engines)
    files = [file for file, _ in groups]
    if len(set(files)) != len(files):
        raise UserError(f"bucket names {[b.name for b in buckets]} map to clashing engine files {files}",
                        hint="give buckets distinct names of letters, digits, '_', '-' or '.'")
    if not onnx_path.is_file():
        raise UserError(f"ONNX file {str(onnx_path)!r} does not exist", hint="run `trtcompile optimize` first")
    reason = engine_unavailable_reason()
    if reason:
        raise UserError(f"cannot build TensorRT engines here: {reason}", hint=NO_BUILDER_HINT)

    from trtcompile.build.progress import RichDisplay, make_monitor, status_line
    from trtcompile.runtime import cuda
    from trtcompile.runtime.tensorrt_backend import make_logger

    trt = import_builder()
    cuda.set_device(0)
    device = cuda.device_info(0)
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    network, parser = _parse(trt, builder, logger, onnx_path, inputs)
    cache_path = Path(settings.timing_cache) if settings.timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""

    entries = []
    display = RichDisplay() if on_progress is None else None
    callback = display if display is not None else status_line(on_progress)
    with display if display is not None else contextlib.nullcontext():
        for file, group in groups:
            label = "+".join(b.name for b in group)
            config = _configure(trt, builder, settings, shapes, group)
            timing_cache = _attach_timing_cache(config, cache_bytes, logger)
            monitor = make_monitor(trt, label, callback)
            config.progress_monitor = monitor
            start = time.perf_counter()
            plan = builder.build_serialized_network(network, config)
            seconds = time.perf_counter() - start
            if plan is None:
                if monitor.cancelled:
                    raise KeyboardInterrupt
                raise UserError(f"TensorRT {trt.__version__} failed to build the engine for bucket(s) {label!r}: "
                                f"{logger.take_errors() or 'see the TensorRT log above'}",
                                hint="a smaller bucket or a --workspace limit may help when it ran out of memory; an "
                                     "unsupported layer needs the model changed or a plugin; --engines per-bucket "
                                     "builds each bucket alone")
            cache_bytes = bytes(memoryview(config.get_timing_cache().serialize()))
            if cache_path:
                _write_atomic(cache_path, cache_bytes)  # after each engine: a later failure keeps the timings
            data = memoryview(plan)
            _write_atomic(out_dir / file, data)
            memory = _context_memory(trt, logger, data, len(group), settings.builds_version_compatible)
            entry = {
                "file": file, "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": data.nbytes, "tensorrt_version": trt.__version__,
                "compute_capability": device.compute_capability, "device_name": device.name,
                "build_flags": build_flags(settings, config.get_flag(trt.BuilderFlag.TF32)),
                "build_seconds": round(seconds, 3), "timing_cache": timing_cache,
                "profiles": [{"bucket": b.name, "index": i, "context_memory_bytes": memory[i]}
                             for i, b in enumerate(group)],
            }
            if len(group) == 1 and settings.engines == "per-bucket":
                entry["bucket"] = group[0].name  # what readers of one-engine-per-bucket packages look for
            entries.append(entry)
            del config, plan, data
    _write_atomic(out_dir / TIMING_CACHE, cache_bytes)
    del network, parser, builder
    return entries
