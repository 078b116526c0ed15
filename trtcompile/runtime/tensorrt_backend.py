"""TensorRT backend: one engine per bucket, each with its own context, stream and buffers.

Written from NVIDIA's TensorRT 10/11 Python API (named tensors, `execute_async_v3`; see
docs/tensorrt11.md in the team notes) and checked attribute by attribute against the installed
`tensorrt_lean` bindings by tests/runtime/test_tensorrt_conformance.py, because the full
TensorRT cannot be installed where this was written. Uses `tensorrt` when installed, else
`tensorrt_lean` (which runs engines but cannot build them).

Per bucket, at load time: deserialize the engine, make one execution context and one
non-blocking stream, size every I/O tensor at the bucket's max shapes and allocate one device
arena and one pinned host arena for all of them (256-byte-aligned slices), and bind the tensor
addresses once. Per call: set input shapes, stage inputs through pinned memory, enqueue (or
launch the CUDA graph captured for this shape), copy outputs back, synchronize.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

from trtcompile.runtime import cuda
from trtcompile.runtime.manifest import Manifest, PackageError
from trtcompile.runtime.shapes import Bucket, InputError, TensorSpec

# TensorRT DataType name -> numpy dtype. BF16/FP8/INT4/FP4 have no numpy type: packages keep
# their I/O in FP32 (OptimizeSettings.keep_io_fp32), so such an engine I/O is a packaging bug.
NUMPY_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}
# How many CUDA graphs (one per input-shape combination) a bucket keeps before dropping the oldest.
MAX_GRAPHS_PER_BUCKET = 8
REBUILD = "rebuild the engines on this machine (`trtcompile build` on the package's model.onnx)"


def import_tensorrt():
    """The full `tensorrt` when installed, else `tensorrt_lean`; ImportError when neither is."""
    try:
        import tensorrt as trt

        if hasattr(trt, "Runtime"):  # the PyPI `tensorrt` stub without its libs has no Runtime
            return trt
    except (ImportError, OSError):
        pass
    import tensorrt_lean as trt

    return trt


def environment_problem(device: int = 0) -> str | None:
    """Why TensorRT engines cannot run here (no tensorrt/tensorrt_lean, no cuda-python, no GPU), or None."""
    try:
        import_tensorrt()
    except (ImportError, OSError) as exc:
        return (f"neither tensorrt nor tensorrt_lean imports ({exc}); install the runtime with "
                f"pip install 'tensorrt-lean-cu13' (or the full tensorrt)")
    return cuda.cuda_problem(device)


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(version).split(".")[:3] if p.isdigit())


def engine_mismatch(entry: dict, *, tensorrt_version: str, compute_capability: str,
                    device_name: str = "this GPU") -> str | None:
    """Why an engine entry cannot run on this TensorRT and GPU, with what to rebuild; None if it can."""
    flags = entry.get("build_flags", {})
    file = entry.get("file", "?")
    built = entry.get("tensorrt_version", "unknown")
    here, then = version_tuple(tensorrt_version), version_tuple(built)
    if flags.get("version_compatible"):
        # A version-compatible plan runs on the same or a later runtime of the same major version.
        if not then or here[:1] != then[:1] or here < then:
            major = then[0] if then else "?"
            return (f"engine {file!r} was built version-compatible with TensorRT {built}, which runs only on "
                    f"TensorRT {major}.x at or above {built}; this machine has TensorRT {tensorrt_version}: "
                    f"{REBUILD}, or install a matching TensorRT")
        if flags.get("exclude_lean_runtime") and here != then:
            return (f"engine {file!r} was built with EXCLUDE_LEAN_RUNTIME by TensorRT {built}, so it needs that "
                    f"exact runtime; this machine has TensorRT {tensorrt_version}: {REBUILD}, or rebuild "
                    f"without --exclude-lean-runtime")
    elif here != then:
        return (f"engine {file!r} was built with TensorRT {built} and this machine has TensorRT "
                f"{tensorrt_version}; engines run only on the version that built them: {REBUILD}, "
                f"or compile with --version-compatible")
    cc_built, cc_here = version_tuple(entry.get("compute_capability", "")), version_tuple(compute_capability)
    built_on = (f"compute capability {entry.get('compute_capability', 'unknown')} "
                f"({entry.get('device_name', 'unknown GPU')})")
    if flags.get("hardware_compatibility") == "ampere_plus":
        if cc_here < (8, 0):
            return (f"engine {file!r} was built for Ampere or newer GPUs (compute capability >= 8.0) and "
                    f"{device_name} is {compute_capability}: {REBUILD}")
    elif cc_built != cc_here:
        return (f"engine {file!r} was built for {built_on} and {device_name} is compute capability "
                f"{compute_capability}: {REBUILD}, or compile with --hardware-compat ampere_plus")
    return None


def numpy_dtype(trt_dtype) -> np.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype))
    if name not in NUMPY_DTYPES:
        raise PackageError(f"engine tensor type {name} has no numpy equivalent; recompile keeping inputs "
                           f"and outputs in FP32/FP16/integer types")
    return np.dtype(NUMPY_DTYPES[name])


def max_shapes(specs: list[TensorSpec], bucket: Bucket) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape at the bucket's max; tensors with a dimension the bucket does not name are left out."""
    shapes = {}
    for spec in specs:
        try:
            shapes[spec.name] = bucket.shape_of(spec.shape, 2)
        except KeyError:
            continue  # e.g. a data-dependent output dimension: TensorRT's own max is used
    return shapes


def volume(shape) -> int:
    return int(np.prod(tuple(shape), dtype=np.int64))


def make_logger(trt):
    """An ILogger that echoes warnings to stderr and keeps errors, so failures can quote them."""

    class Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR,
                            trt.ILogger.Severity.WARNING):
                sys.stderr.write(f"[TensorRT] {severity.name}: {msg}\n")

        def take_errors(self) -> str:
            text, self.errors = "; ".join(self.errors[-5:]), []
            return text

    return Logger()


class Tensor:
    """An I/O tensor's slice of the bucket's arenas, sized at the bucket's max shape."""

    def __init__(self, name: str, is_input: bool, dtype: np.dtype, capacity: int):
        self.name, self.is_input, self.dtype, self.capacity = name, is_input, dtype, capacity
        self.offset = 0
        self.device_ptr = 0
        self.host: np.ndarray | None = None  # pinned, `capacity` elements

    @property
    def nbytes(self) -> int:
        return self.capacity * self.dtype.itemsize


class EngineSession:
    """One bucket's engine, context, stream, buffers and CUDA graphs.

    The lower-level pieces are public so a generate loop can keep tensors on the device between
    steps: `tensors[name].device_ptr` (this session's buffer), `bind(name, ptr)` to point a tensor
    at another device buffer, `set_input_shapes` for inputs already on the device, `upload` for
    the rest, `enqueue`, and `download(["logits"])` for only what the host needs.
    """

    def __init__(self, trt, runtime, logger, entry: dict, plan: bytes, bucket: Bucket,
                 inputs: list[TensorSpec], outputs: list[TensorSpec], *, cuda_graphs: bool = True):
        self.trt, self.logger, self.bucket, self.file = trt, logger, bucket, entry["file"]
        self.cuda_graphs = cuda_graphs
        self.engine = runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            lean = ""
            if trt.__name__ == "tensorrt_lean" and not entry.get("build_flags", {}).get("version_compatible"):
                lean = " (the lean runtime is meant for engines built with --version-compatible)"
            raise PackageError(f"TensorRT {trt.__version__} could not deserialize {self.file!r}: "
                               f"{logger.take_errors() or 'see the log above'}{lean}; {REBUILD}")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.graphs: dict[tuple, cuda.Graph] = {}
        self.uncapturable: set[tuple] = set()
        self.last_key: tuple | None = None
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.device = self.host = None
        try:
            self.tensors = self._plan_tensors(inputs, outputs)
            self._allocate()
        except BaseException:
            self.close()
            raise

    def _plan_tensors(self, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> dict[str, Tensor]:
        trt, engine, context = self.trt, self.engine, self.context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        engine_inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        expected = [s.name for s in inputs]
        if sorted(engine_inputs) != sorted(expected) or not {s.name for s in outputs} <= set(names):
            raise PackageError(f"engine {self.file!r} has inputs {engine_inputs} and tensors {names}, but the "
                               f"manifest lists inputs {expected} and outputs {[s.name for s in outputs]}: "
                               f"the engine is from another model; {REBUILD}")
        for name in names:
            if engine.is_shape_inference_io(name):
                raise PackageError(f"engine {self.file!r} has shape-tensor I/O {name!r}, which this runtime "
                                   f"does not feed; export the model with data inputs only")
        specs = {s.name: s for s in inputs + outputs}
        wanted = max_shapes(inputs + outputs, self.bucket)
        for name in engine_inputs:
            lo, _, hi = (tuple(d) for d in engine.get_tensor_profile_shape(name, 0))
            if name not in wanted:
                raise PackageError(f"input {name!r} has shape {specs[name].shape}, with a dimension bucket "
                                   f"{self.bucket.name!r} gives no range for; recompile the package")
            want_lo, want_hi = self.bucket.shape_of(specs[name].shape, 0), wanted[name]
            if any(a < b for a, b in zip(want_lo, lo)) or any(a > b for a, b in zip(want_hi, hi)):
                raise PackageError(f"engine {self.file!r} accepts {name!r} from {list(lo)} to {list(hi)}, but "
                                   f"bucket {self.bucket.name!r} spans {list(want_lo)} to {list(want_hi)}: "
                                   f"the engine was built for another profile; {REBUILD}")
            self._set_shape(name, want_hi)
        self._infer_shapes()
        tensors = {}
        for name in names:
            dtype = numpy_dtype(engine.get_tensor_dtype(name))
            if name in specs and np.dtype(specs[name].dtype) != dtype:
                raise PackageError(f"engine {self.file!r} has {name!r} as {dtype}, the manifest says "
                                   f"{specs[name].dtype}; {REBUILD}")
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise PackageError(f"engine {self.file!r} output {name!r} has a data-dependent shape "
                                   f"{list(shape)}, which this runtime does not support")
            capacity = max(volume(shape), volume(wanted[name]) if name in wanted else 0)
            tensors[name] = Tensor(name, name in engine_inputs, dtype, capacity)
        return tensors

    def _allocate(self) -> None:
        offsets, total = cuda.layout({n: t.nbytes for n, t in self.tensors.items()})
        self.device, self.host = cuda.DeviceArena(total), cuda.PinnedArena(total)
        for name, t in self.tensors.items():
            t.offset, t.device_ptr = offsets[name], self.device.ptr + offsets[name]
            t.host = self.host.view(t.offset, t.nbytes, t.dtype)
            self.bind(name, t.device_ptr)

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if self.shapes.get(name) == shape:
            return
        if not self.context.set_input_shape(name, shape):
            raise InputError(f"input {name!r} shape {list(shape)} is outside what engine {self.file!r} "
                             f"(bucket {self.bucket.name!r}) accepts: {self.logger.take_errors()}")
        self.shapes[name] = shape

    def _infer_shapes(self) -> None:
        missing = self.context.infer_shapes()
        if missing:
            raise InputError(f"engine {self.file!r} still needs shapes for {list(missing)}")

    def bind(self, name: str, ptr: int) -> None:
        """Point a tensor at a device address (256-byte aligned).

        Captured graphs baked in the old address, so they are dropped; a loop that rebinds or
        changes shapes every step gains nothing from graphs and should set `cuda_graphs = False`.
        """
        if not self.context.set_tensor_address(name, ptr):
            raise RuntimeError(f"set_tensor_address({name!r}) failed: {self.logger.take_errors()}")
        self.drop_graphs()

    def upload(self, feeds: dict[str, np.ndarray]) -> None:
        """Set each input's shape and stage its array through pinned memory to its device buffer."""
        for name, array in feeds.items():
            t = self.tensors[name]
            if array.size > t.capacity:
                raise InputError(f"input {name!r} shape {list(array.shape)} exceeds bucket "
                                 f"{self.bucket.name!r}'s max ({t.capacity} elements)")
            self._set_shape(name, tuple(array.shape))
            np.copyto(t.host[:array.size].reshape(array.shape), array, casting="no")
            cuda.copy_htod_async(t.device_ptr, self.host.ptr + t.offset, array.nbytes, self.stream)

    def set_input_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Shapes only, for inputs whose data is already on the device (e.g. a KV cache bound with `bind`)."""
        for name, shape in shapes.items():
            self._set_shape(name, tuple(int(d) for d in shape))

    def enqueue(self) -> None:
        """Run the engine on the stream: uncaptured after a shape change, from a CUDA graph afterwards."""
        key = tuple(sorted(self.shapes.items()))
        if key == self.last_key and key in self.graphs:
            self.graphs[key].launch(self.stream)
            return
        if key != self.last_key:
            self._infer_shapes()
        self._execute()
        shape_changed, self.last_key = key != self.last_key, key
        # TensorRT does per-shape setup on the first enqueue after a shape change, which must not
        # end up in the graph: capture after that run has finished, as trtexec does
        # (samples/common/sampleInference.cpp); the graph serves the next call with these shapes.
        if self.cuda_graphs and shape_changed and key not in self.graphs and key not in self.uncapturable:
            self.stream.synchronize()
            graph = cuda.Graph.capture(self.stream, lambda: self.context.execute_async_v3(self.stream.handle))
            if graph is None:
                self.uncapturable.add(key)
                self.logger.take_errors()
            else:
                self._keep_graph(key, graph)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.file!r}: {self.logger.take_errors()}")

    def _keep_graph(self, key: tuple, graph: "cuda.Graph") -> None:
        if len(self.graphs) >= MAX_GRAPHS_PER_BUCKET:
            self.stream.synchronize()
            self.graphs.pop(next(iter(self.graphs))).close()
        self.graphs[key] = graph

    def output_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.context.get_tensor_shape(name))

    def download(self, names: list[str] | None = None, *, copy: bool = True) -> dict[str, np.ndarray]:
        """Copy outputs to pinned memory, synchronize, return them at their actual shapes.

        copy=False returns views into the pinned buffers, valid until this bucket's next call.
        """
        names = names if names is not None else [n for n, t in self.tensors.items() if not t.is_input]
        shapes = {}
        for name in names:
            t, shape = self.tensors[name], self.output_shape(name)
            shapes[name] = shape
            cuda.copy_dtoh_async(self.host.ptr + t.offset, t.device_ptr, volume(shape) * t.dtype.itemsize, self.stream)
        self.stream.synchronize()
        out = {}
        for name, shape in shapes.items():
            view = self.tensors[name].host[:volume(shape)].reshape(shape)
            out[name] = view.copy() if copy else view
        return out

    def drop_graphs(self) -> None:
        if self.graphs:
            self.stream.synchronize()
        for graph in self.graphs.values():
            graph.close()
        self.graphs.clear()
        self.uncapturable.clear()

    def close(self) -> None:
        if getattr(self, "stream", None) is not None and self.stream.stream is not None:
            self.stream.synchronize()
        for graph in getattr(self, "graphs", {}).values():
            graph.close()
        self.graphs = {}
        for arena in (self.device, self.host):
            if arena is not None:
                arena.close()
        self.device = self.host = None
        if getattr(self, "stream", None) is not None:
            self.stream.close()
        # The context must go before its engine.
        self.context = None
        self.engine = None


class TensorRTBackend:
    """Runs a package's engines; one call at a time (each bucket owns one context and one stream)."""

    name = "tensorrt"

    def __init__(self, manifest: Manifest, device: int = 0, *, cuda_graphs: bool = True, copy_outputs: bool = True):
        problem = environment_problem(device)
        if problem:
            raise PackageError(f"backend 'tensorrt' cannot run here: {problem}")
        trt = import_tensorrt()
        self.trt, self.device, self.copy_outputs = trt, device, copy_outputs
        cuda.set_device(device)
        info = cuda.device_info(device)
        entries = {e["bucket"]: e for e in manifest.engines}
        missing = [b.name for b in manifest.buckets if b.name not in entries]
        if missing:
            raise PackageError(f"package {str(manifest.root)!r} has no engine for bucket(s) {missing}; {REBUILD}")
        for entry in entries.values():
            reason = engine_mismatch(entry, tensorrt_version=trt.__version__,
                                     compute_capability=info.compute_capability, device_name=info.name)
            if reason:
                raise PackageError(reason)
        self.logger = make_logger(trt)
        self.runtime = trt.Runtime(self.logger)
        if any(e.get("build_flags", {}).get("version_compatible") for e in entries.values()):
            # Version-compatible plans carry the lean runtime's host code; TensorRT runs it only
            # when told the plan is trusted (it came from this package, checked by sha256 below).
            self.runtime.engine_host_code_allowed = True
        self.sessions: dict[str, EngineSession] = {}
        try:
            for bucket in manifest.buckets:
                entry = entries[bucket.name]
                plan = manifest.path(entry["file"]).read_bytes()
                if entry.get("sha256") and hashlib.sha256(plan).hexdigest() != entry["sha256"]:
                    raise PackageError(f"{entry['file']!r} does not match its manifest sha256: the engine was "
                                       f"changed after compile; {REBUILD}")
                self.sessions[bucket.name] = EngineSession(trt, self.runtime, self.logger, entry, plan, bucket,
                                                           manifest.inputs, manifest.outputs, cuda_graphs=cuda_graphs)
        except BaseException:
            self.close()
            raise

    def session(self, bucket: Bucket | str) -> EngineSession:
        return self.sessions[bucket if isinstance(bucket, str) else bucket.name]

    def run(self, feeds: dict[str, np.ndarray], bucket: Bucket) -> dict[str, np.ndarray]:
        session = self.session(bucket)
        session.upload(feeds)
        session.enqueue()
        return session.download(copy=self.copy_outputs)

    def close(self) -> None:
        for session in getattr(self, "sessions", {}).values():
            session.close()
        self.sessions = {}
        self.runtime = None
