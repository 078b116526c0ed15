"""Can this machine run a package's TensorRT engines? The rules, and the facts they are checked against.

`probe_environment()` gathers the facts (which TensorRT imports, full or lean, its version, the
GPU); `unavailable_reason(manifest, env)` applies the rules without touching TensorRT or CUDA, so
the decision that `load(backend="auto")` takes is tested on CPU with the real `tensorrt_lean`
version and a stated GPU. The rules, from NVIDIA's TensorRT 11 docs:

- An engine runs on the TensorRT version that built it (major.minor.patch), unless it was built
  version-compatible: then on that version or any later one of the same major, and across majors
  only 10 -> 11 and 8 -> 10 ("Engine Compatibility", TensorRT 11.1; support matrix 11.4: "TensorRT
  10 version-compatible engines can run with a TensorRT 11 runtime ... No other combination across
  major versions is supported").
- The lean runtime (`tensorrt_lean`) deserializes version-compatible engines only
  (NVIDIA/TensorRT#3307, #4790), so a plain engine is refused before any deserialization.
- An engine built with EXCLUDE_LEAN_RUNTIME carries no runtime of its own: it runs on the exact
  version that built it, or on a later one through `Runtime.load_runtime(<libnvinfer_lean of the
  build version>)` ("Manually Loading the Runtime" in the developer guide; trtexec --leanDLLPath).
- Without hardware compatibility an engine runs on the compute capability that built it;
  `ampere_plus` engines on any compute capability >= 8.0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from trtcompile.runtime.engine_layout import EngineLayoutError, engine_layout
from trtcompile.runtime.manifest import Manifest

REBUILD = "rebuild the engines on this machine (`trtcompile build` on the package's model.onnx)"
# (build major, runtime major) pairs NVIDIA supports for version-compatible engines across majors.
CROSS_MAJOR_VERSION_COMPATIBLE = {(8, 10), (10, 11)}
# Where an engine built with --exclude-lean-runtime finds the lean runtime of its build version.
LEAN_LIBRARY_ENV = "TRTCOMPILE_LEAN_LIBRARY"
INSTALL_FULL = "pip install 'trtcompile[tensorrt]'"
INSTALL_LEAN = "pip install 'trtcompile[lean]'"


@dataclass(frozen=True)
class Environment:
    """What the TensorRT backend would run on here: `problem` is why it cannot run at all (or None)."""

    problem: str | None = None
    tensorrt_kind: str | None = None  # "full" (tensorrt) or "lean" (tensorrt_lean)
    tensorrt_version: str | None = None
    compute_capability: str | None = None
    device_name: str = "this GPU"
    lean_library: str | None = None  # libnvinfer_lean of another version, for --exclude-lean-runtime engines


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(version).split(".")[:3] if p.isdigit())


def tensorrt_kind(trt) -> str:
    return "lean" if trt.__name__.split(".")[0] == "tensorrt_lean" else "full"


def import_tensorrt(prefer: str | None = None):
    """The full `tensorrt` when installed, else `tensorrt_lean`; ImportError when neither is.

    prefer="lean" takes tensorrt_lean even where the full one is installed (to run as a lean-only
    deployment would); prefer="full" never falls back to the lean runtime.
    """
    if prefer != "lean":
        try:
            import tensorrt as trt

            if hasattr(trt, "Runtime"):  # the PyPI `tensorrt` stub without its libs has no Runtime
                return trt
            error: Exception = ImportError(f"the installed tensorrt ({getattr(trt, '__file__', '?')}) has no Runtime")
        except (ImportError, OSError) as exc:
            error = exc
        if prefer == "full":
            raise ImportError(f"the full TensorRT does not import ({error}); {INSTALL_FULL}")
    import tensorrt_lean as trt

    return trt


def probe_environment(device: int = 0, *, prefer: str | None = None, lean_library: str | None = None) -> Environment:
    """The facts `unavailable_reason` needs, from the installed TensorRT and the CUDA driver."""
    lean_library = lean_library or os.environ.get(LEAN_LIBRARY_ENV) or None
    try:
        trt = import_tensorrt(prefer)
    except (ImportError, OSError) as exc:
        return Environment(problem=f"neither tensorrt nor tensorrt_lean imports ({exc}); install a TensorRT runtime: "
                                   f"{INSTALL_FULL} (full) or {INSTALL_LEAN}", lean_library=lean_library)
    kind, version = tensorrt_kind(trt), trt.__version__
    from trtcompile.runtime import cuda

    problem = cuda.cuda_problem(device)
    if problem:
        return Environment(problem=problem, tensorrt_kind=kind, tensorrt_version=version, lean_library=lean_library)
    try:
        info = cuda.device_info(device)
    except cuda.CudaError as exc:
        return Environment(problem=str(exc), tensorrt_kind=kind, tensorrt_version=version, lean_library=lean_library)
    return Environment(None, kind, version, info.compute_capability, info.name, lean_library)


def engine_mismatch(entry: dict, env: Environment) -> str | None:
    """Why this engine cannot run on `env` (its TensorRT and GPU), with what to do; None when it can."""
    flags = entry.get("build_flags", {})
    file = entry.get("file", "?")
    built = entry.get("tensorrt_version", "unknown")
    here, then = version_tuple(env.tensorrt_version or ""), version_tuple(built)
    version_compatible = bool(flags.get("version_compatible"))
    if env.tensorrt_kind == "lean" and not version_compatible:
        return (f"engine {file!r} was not built version-compatible, and the lean runtime (tensorrt_lean "
                f"{env.tensorrt_version}) runs only version-compatible engines: rebuild with `--runtime lean` "
                f"(which builds version-compatible engines), or install the full TensorRT runtime ({INSTALL_FULL})")
    if version_compatible:
        if not then or not here:
            return f"engine {file!r} records no usable TensorRT version ({built!r}): {REBUILD}"
        same_major = here[:1] == then[:1] and here >= then
        if not same_major and (then[0], here[0]) not in CROSS_MAJOR_VERSION_COMPATIBLE:
            return (f"engine {file!r} was built version-compatible with TensorRT {built}, which runs on TensorRT "
                    f"{then[0]}.x at or above {built}" + "".join(f" or on TensorRT {b}.x" for a, b in
                                                                 sorted(CROSS_MAJOR_VERSION_COMPATIBLE) if a == then[0])
                    + f"; this machine has TensorRT {env.tensorrt_version}: {REBUILD}, or install a matching TensorRT")
        if flags.get("exclude_lean_runtime") and here != then and not env.lean_library:
            return (f"engine {file!r} was built with --exclude-lean-runtime by TensorRT {built}, so it carries no "
                    f"runtime of its own and this machine has TensorRT {env.tensorrt_version}: point "
                    f"{LEAN_LIBRARY_ENV} (or load(..., lean_library=...)) at libnvinfer_lean from TensorRT {built}, "
                    f"or rebuild without --exclude-lean-runtime")
    elif here != then:
        return (f"engine {file!r} was built with TensorRT {built} and this machine has TensorRT "
                f"{env.tensorrt_version}; such engines run only on the version that built them: {REBUILD}, "
                f"or compile with `--runtime lean` (version-compatible engines)")
    cc_built, cc_here = version_tuple(entry.get("compute_capability", "")), version_tuple(env.compute_capability or "")
    built_on = (f"compute capability {entry.get('compute_capability', 'unknown')} "
                f"({entry.get('device_name', 'unknown GPU')})")
    if flags.get("hardware_compatibility") == "ampere_plus":
        if cc_here < (8, 0):
            return (f"engine {file!r} was built for Ampere or newer GPUs (compute capability >= 8.0) and "
                    f"{env.device_name} is {env.compute_capability}: {REBUILD}")
    elif cc_built != cc_here:
        return (f"engine {file!r} was built for {built_on} and {env.device_name} is compute capability "
                f"{env.compute_capability}: {REBUILD}, or compile with --hardware-compat ampere_plus")
    return None


def needs_lean_library(entry: dict, env: Environment) -> bool:
    """An --exclude-lean-runtime engine from another TensorRT version: load it through `load_runtime`."""
    flags = entry.get("build_flags", {})
    return bool(flags.get("version_compatible") and flags.get("exclude_lean_runtime")
                and version_tuple(entry.get("tensorrt_version", "")) != version_tuple(env.tensorrt_version or ""))


def unavailable_reason(manifest: Manifest, env: Environment) -> str | None:
    """Why the TensorRT backend cannot run this package on `env`, or None when it can."""
    if not manifest.engines:
        reason = manifest.data.get("build", {}).get("engines_skipped", "it was compiled without engines")
        return f"the package has no TensorRT engines ({reason})"
    try:
        engine_layout(manifest)
    except EngineLayoutError as exc:
        return str(exc)
    if env.problem:
        return env.problem
    for entry in manifest.engines:
        reason = engine_mismatch(entry, env)
        if reason:
            return reason
    return None
