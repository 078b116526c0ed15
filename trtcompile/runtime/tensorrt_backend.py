"""TensorRT backend: each engine deserialized once, one execution context per optimization profile.

Written from NVIDIA's TensorRT 10/11 Python API (named tensors, `execute_async_v3`; see
docs/tensorrt11.md in the team notes) and checked attribute by attribute against the installed
`tensorrt_lean` bindings by tests/runtime/test_tensorrt_conformance.py, because the full
TensorRT cannot be installed where this was written. Uses `tensorrt` when installed, else
`tensorrt_lean` (which runs version-compatible engines but cannot build them).

At load time: check every engine against this machine (engine_check.py) before touching it;
per engine file, stream the plan into `deserialize_cuda_engine` while hashing it (plan_reader.py);
per bucket, one execution context on its profile (a shared engine's weights stay in GPU memory
once), one non-blocking stream, and the buffers buffers.py plans (device + pinned for what crosses
to the host, device only and lazily for the KV cache). Per call: set shapes, stage inputs through
pinned memory, enqueue or replay a CUDA graph (graph_cache.py), copy outputs back, synchronize.

A session is used by one thread at a time: `run` holds `session.lock`, and a caller that drives
the lower-level methods itself (a generation loop) holds it around each step.
"""

from __future__ import annotations

import sys
import threading

import numpy as np

from trtcompile.runtime import cuda
from trtcompile.runtime.buffers import (BufferPlan, Bindings, device_resident_tensors, max_shapes, plan_buffers,
                                        volume)
from trtcompile.runtime.engine_check import (REBUILD, Environment, engine_mismatch, import_tensorrt,
                                             needs_lean_library, probe_environment, tensorrt_kind,
                                             unavailable_reason, version_tuple)
from trtcompile.runtime.engine_layout import ProfileSlot, engine_layout, engines_by_file
from trtcompile.runtime.graph_cache import MAX_GRAPHS, GraphCache, graph_key
from trtcompile.runtime.manifest import Manifest, PackageError, sha256_of
from trtcompile.runtime.plan_reader import HashingPlanReader, stream_reader
from trtcompile.runtime.shapes import Bucket, InputError, TensorSpec

__all__ = ["EngineSession", "TensorRTBackend", "engine_mismatch", "environment_problem", "import_tensorrt",
           "make_logger", "max_shapes", "numpy_dtype", "version_tuple", "volume", "Environment"]

# TensorRT DataType name -> numpy dtype. BF16/FP8/INT4/FP4 have no numpy type: packages keep
# their I/O in FP32 (OptimizeSettings.keep_io_fp32), so such an engine I/O is a packaging bug.
NUMPY_DTYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "UINT8": "uint8"}
# Kept for callers of the old name: graphs per execution context.
MAX_GRAPHS_PER_BUCKET = MAX_GRAPHS


def environment_problem(device: int = 0) -> str | None:
    """Why TensorRT engines cannot run here at all (no tensorrt/tensorrt_lean, no cuda-python, no GPU), or None."""
    return probe_environment(device).problem


def numpy_dtype(trt_dtype) -> np.dtype:
    name = getattr(trt_dtype, "name", str(trt_dtype))
    if name not in NUMPY_DTYPES:
        raise PackageError(f"engine tensor type {name} has no numpy equivalent; recompile keeping inputs "
                           f"and outputs in FP32/FP16/integer types")
    return np.dtype(NUMPY_DTYPES[name])


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


def make_runtime(trt, logger, entry: dict, env: Environment):
    """(parent, runtime) for one engine file; parent is None unless the lean runtime had to be loaded.

    An --exclude-lean-runtime engine from another TensorRT version runs on the lean runtime of its
    build version, loaded from a library (Runtime.load_runtime, as trtexec --leanDLLPath does);
    the parent runtime must outlive it.
    """
    runtime = trt.Runtime(logger)
    parent = None
    if needs_lean_library(entry, env):
        parent, runtime = runtime, runtime.load_runtime(str(env.lean_library))
        if runtime is None:
            raise PackageError(f"TensorRT could not load the lean runtime {env.lean_library!r} for {entry['file']!r} "
                               f"(built by TensorRT {entry.get('tensorrt_version')}): {logger.take_errors()}; give "
                               f"the libnvinfer_lean of that version, or {REBUILD}")
    if entry.get("build_flags", {}).get("version_compatible"):
        # Version-compatible plans carry the lean runtime's host code; TensorRT runs it only when
        # told the plan is trusted (its sha256 is checked against the manifest first).
        runtime.engine_host_code_allowed = True
    return parent, runtime


class LoadedEngine:
    """One deserialized plan; every bucket it serves gets an execution context on its own profile."""

    def __init__(self, trt, runtime, logger, manifest: Manifest, entry: dict):
        self.file, self.entry = entry["file"], entry
        path = manifest.path(self.file)
        expected = entry.get("sha256")
        trusted_first = bool(entry.get("build_flags", {}).get("version_compatible"))
        if expected and trusted_first and sha256_of(path) != expected:
            raise PackageError(f"{self.file!r} does not match its manifest sha256: the engine was changed after "
                               f"compile, and its embedded runtime is not run unchecked; {REBUILD}")
        reader = HashingPlanReader(path)
        try:
            try:
                source = stream_reader(trt, reader)
            except RuntimeError:  # IStreamReaderV2 could not start: one read into memory, still hashed as it goes
                source = bytearray()
                while chunk := reader.read(reader.size - len(source)):
                    source += chunk
            engine = runtime.deserialize_cuda_engine(source)
            digest = reader.hexdigest()
        finally:
            reader.close()
        if expected and digest != expected:
            del engine
            raise PackageError(f"{self.file!r} does not match its manifest sha256: the engine was changed after "
                               f"compile; {REBUILD}")
        if engine is None:
            lean = ""
            if tensorrt_kind(trt) == "lean" and not entry.get("build_flags", {}).get("version_compatible"):
                lean = " (the lean runtime runs only engines built with `--runtime lean`)"
            raise PackageError(f"TensorRT {trt.__version__} could not deserialize {self.file!r}: "
                               f"{logger.take_errors() or 'see the log above'}{lean}; {REBUILD}")
        self.engine = engine
        self.num_profiles = engine.num_optimization_profiles

    def close(self) -> None:
        self.engine = None


class SessionTensor:
    """An I/O tensor of one session: its planned size, its own device address, its pinned staging view."""

    def __init__(self, buffer, bindings: Bindings, host: np.ndarray | None):
        self.name, self.is_input, self.dtype = buffer.name, buffer.is_input, buffer.dtype
        self.capacity, self.resident = buffer.capacity, buffer.resident
        self._bindings = bindings
        self.host = host  # pinned, `capacity` elements; None for device-resident tensors

    @property
    def device_ptr(self) -> int:
        """This session's own buffer (0 for a resident tensor not allocated yet); `bind(name, device_ptr)` releases."""
        return self._bindings.own[self.name]

    @property
    def nbytes(self) -> int:
        return self.capacity * self.dtype.itemsize


class EngineSession:
    """One bucket: an execution context on its profile, a stream, buffers, CUDA graphs and a lock.

    For a generation loop that keeps tensors on the device, hold `lock` around each step and use
    `bind(name, ptr)` (point a tensor at your device memory; `release(name)` or binding
    `tensors[name].device_ptr` gives it back), `set_input_shapes` for inputs already on the device,
    `upload` for the rest (always into this session's own buffers), `enqueue`, and
    `download(["logits"])` (from wherever the engine wrote). `run(feeds)` is all of that for host
    arrays, on the session's own buffers.
    """

    def __init__(self, trt, loaded: LoadedEngine, logger, slot: ProfileSlot, bucket: Bucket,
                 inputs: list[TensorSpec], outputs: list[TensorSpec], resident: set[str], *, cuda_graphs: bool = True):
        self.trt, self.logger, self.bucket, self.file = trt, logger, bucket, slot.file
        self.profile = slot.profile
        self.cuda_graphs = cuda_graphs
        self.lock = threading.RLock()
        self.graphs = GraphCache()
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._shapes_changed = True
        self.device = self.host = self.resident_arena = None
        self.stream = None
        engine = loaded.engine
        if slot.profile >= loaded.num_profiles:
            raise PackageError(f"engine {self.file!r} has {loaded.num_profiles} optimization profile(s), but the "
                               f"manifest gives bucket {bucket.name!r} profile {slot.profile}; {REBUILD}")
        # Each context allocates TensorRT's activation memory for its own profile only (STATIC would
        # allocate the largest profile's size in every context).
        self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.ON_PROFILE_CHANGE)
        if self.context is None:
            need = engine.get_device_memory_size_for_profile_v2(slot.profile)
            raise cuda.CudaError(f"TensorRT could not create an execution context for bucket {bucket.name!r} "
                                 f"(profile {slot.profile} of {self.file!r}, {need / 2**20:.1f} MiB of activation "
                                 f"memory): {logger.take_errors() or 'out of device memory?'}")
        try:
            self.stream = cuda.Stream()
            if slot.profile != 0:
                if not self.context.set_optimization_profile_async(slot.profile, self.stream.handle):
                    raise PackageError(f"TensorRT refused profile {slot.profile} of {self.file!r} for bucket "
                                       f"{bucket.name!r}: {logger.take_errors()}; {REBUILD}")
                self.stream.synchronize()
            self.plan = self._plan(engine, inputs, outputs, resident)
            self._allocate()
        except BaseException:
            self.close()
            raise

    # --- load time -------------------------------------------------------------------------

    def _plan(self, engine, inputs: list[TensorSpec], outputs: list[TensorSpec], resident: set[str]) -> BufferPlan:
        trt = self.trt
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
        wanted = max_shapes(inputs, self.bucket)
        for name in engine_inputs:
            lo, _, hi = (tuple(d) for d in engine.get_tensor_profile_shape(name, self.profile))
            if name not in wanted:
                raise PackageError(f"input {name!r} has shape {specs[name].shape}, with a dimension bucket "
                                   f"{self.bucket.name!r} gives no range for; recompile the package")
            want_lo, want_hi = self.bucket.shape_of(specs[name].shape, 0), wanted[name]
            if any(a < b for a, b in zip(want_lo, lo)) or any(a > b for a, b in zip(want_hi, hi)):
                raise PackageError(f"engine {self.file!r} profile {self.profile} accepts {name!r} from {list(lo)} "
                                   f"to {list(hi)}, but bucket {self.bucket.name!r} spans {list(want_lo)} to "
                                   f"{list(want_hi)}: the engine was built for another profile; {REBUILD}")
            self._set_shape(name, want_hi)
        self._infer_shapes()
        engine_shapes, extra_outputs, aliases = {}, [], {}
        for name in names:
            if name not in engine_inputs:
                source = engine.get_aliased_input_tensor(name)
                if source:  # written in place (KV-cache update): TensorRT wants one address for both
                    aliases[name] = source
            dtype = numpy_dtype(engine.get_tensor_dtype(name))
            if name in specs and np.dtype(specs[name].dtype) != dtype:
                raise PackageError(f"engine {self.file!r} has {name!r} as {dtype}, the manifest says "
                                   f"{specs[name].dtype}; {REBUILD}")
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise PackageError(f"engine {self.file!r} output {name!r} has a data-dependent shape "
                                   f"{list(shape)}, which this runtime does not support")
            engine_shapes[name] = shape
            if name not in specs:  # an engine output the manifest does not list still needs an address
                extra_outputs.append(TensorSpec(name, dtype.name, list(shape)))
        return plan_buffers(inputs, outputs + extra_outputs, self.bucket, resident, engine_shapes, aliases)

    def _allocate(self) -> None:
        plan = self.plan
        if plan.staged_bytes:
            self.device, self.host = cuda.DeviceArena(plan.staged_bytes), cuda.PinnedArena(plan.staged_bytes)
        own = {}
        for name in plan.tensors:
            offset = plan.offset_of(name, plan.staged_offsets)
            own[name] = self.device.ptr + offset if offset is not None else 0
        self.bindings = Bindings(own, self._set_address, self._allocate_resident)
        self.tensors = {}
        for name, buffer in plan.tensors.items():
            host = None
            offset = plan.offset_of(name, plan.staged_offsets)
            if offset is not None:
                host = self.host.view(offset, buffer.nbytes, buffer.dtype)
            self.tensors[name] = SessionTensor(buffer, self.bindings, host)

    def _allocate_resident(self) -> dict[str, int]:
        # Only when a caller feeds the KV cache from the host (Model.run on a decoder): generation
        # binds its own cache, and then this memory is never needed.
        self.resident_arena = cuda.DeviceArena(self.plan.resident_bytes)
        return {n: self.resident_arena.ptr + self.plan.offset_of(n, self.plan.resident_offsets)
                for n in self.plan.tensors if self.plan.offset_of(n, self.plan.resident_offsets) is not None}

    def _set_address(self, name: str, ptr: int) -> None:
        if not self.context.set_tensor_address(name, ptr):
            raise RuntimeError(f"set_tensor_address({name!r}) failed: {self.logger.take_errors()}")

    def _set_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if self.shapes.get(name) == shape:
            return
        if not self.context.set_input_shape(name, shape):
            raise InputError(f"input {name!r} shape {list(shape)} is outside what engine {self.file!r} "
                             f"(bucket {self.bucket.name!r}) accepts: {self.logger.take_errors()}")
        self.shapes[name] = shape
        self._shapes_changed = True

    def _infer_shapes(self) -> None:
        missing = self.context.infer_shapes()
        if missing:
            raise InputError(f"engine {self.file!r} still needs shapes for {list(missing)}")
        self._shapes_changed = False

    # --- the generation-facing surface ---------------------------------------------------------

    def bind(self, name: str, ptr: int) -> None:
        """Point a tensor at device memory you own (256-byte aligned); `tensors[name].device_ptr` (or 0) releases.

        Graphs are keyed by addresses, so rebinding keeps the graphs of other bindings.
        """
        self.bindings.bind(name, ptr)

    def release(self, name: str) -> None:
        """Give a bound tensor back to this session's own buffer."""
        self.bindings.release(name)

    def upload(self, feeds: dict[str, np.ndarray]) -> None:
        """Set each input's shape and copy it into this session's own buffer (pointing the engine back at it)."""
        for name, array in feeds.items():
            t = self.tensors[name]
            if not t.is_input:
                raise InputError(f"{name!r} is an output of engine {self.file!r}, not an input")
            if array.size > t.capacity:
                raise InputError(f"input {name!r} shape {list(array.shape)} exceeds bucket "
                                 f"{self.bucket.name!r}'s max ({t.capacity} elements)")
            if array.dtype != t.dtype:
                raise InputError(f"input {name!r} has dtype {array.dtype}, the engine takes {t.dtype}")
            ptr = self.bindings.upload_target(name)
            self._set_shape(name, tuple(array.shape))
            if t.host is not None:
                np.copyto(t.host[:array.size].reshape(array.shape), array, casting="no")
                cuda.copy_htod_async(ptr, t.host.ctypes.data, array.nbytes, self.stream)
            else:  # device-resident (K/V fed from the host): straight from pageable memory, no pinned copy
                array = np.ascontiguousarray(array)
                cuda.copy_htod_async(ptr, array.ctypes.data, array.nbytes, self.stream)

    def set_input_shapes(self, shapes: dict[str, tuple[int, ...]]) -> None:
        """Shapes only, for inputs whose data is already on the device (e.g. a KV cache bound with `bind`)."""
        for name, shape in shapes.items():
            self._set_shape(name, tuple(int(d) for d in shape))

    def enqueue(self) -> str:
        """Run the engine on the stream: replay a CUDA graph for this (profile, shapes, addresses), or enqueue.

        Returns "replay" or "run" (graph_cache.GraphCache decides when a run is also captured).
        """
        self.bindings.ensure_addresses()
        if self._shapes_changed:
            self._infer_shapes()
        key = graph_key(self.profile, self.shapes, self.bindings.addresses())
        return self.graphs.call(key, execute=self._execute, capture=self._capture,
                                launch=lambda graph: graph.launch(self.stream), release=self._close_graph,
                                enabled=self.cuda_graphs)

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise RuntimeError(f"TensorRT execute_async_v3 failed for {self.file!r}: {self.logger.take_errors()}")

    def _capture(self):
        # After the uncaptured run above: TensorRT's per-shape setup happened there, not in the graph.
        self.stream.synchronize()
        graph = cuda.Graph.capture(self.stream, lambda: self.context.execute_async_v3(self.stream.handle))
        if graph is None:
            self.logger.take_errors()
        return graph

    def _close_graph(self, graph) -> None:
        self.stream.synchronize()
        graph.close()

    def output_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.context.get_tensor_shape(name))

    def download(self, names: list[str] | None = None, *, copy: bool = True) -> dict[str, np.ndarray]:
        """Copy outputs from where the engine wrote them, synchronize, return them at their actual shapes.

        copy=False returns views into the pinned buffers, valid until this session's next call.
        """
        names = names if names is not None else [n for n, t in self.tensors.items() if not t.is_input]
        out, staged = {}, {}
        for name in names:
            t, shape = self.tensors[name], self.output_shape(name)
            nbytes = volume(shape) * t.dtype.itemsize
            src = self.bindings.download_source(name)
            if t.host is not None:
                if volume(shape) > t.capacity:
                    raise RuntimeError(f"output {name!r} of {self.file!r} has shape {list(shape)}, more than the "
                                       f"{t.capacity} elements planned for bucket {self.bucket.name!r}")
                cuda.copy_dtoh_async(t.host.ctypes.data, src, nbytes, self.stream)
                staged[name] = shape
            else:  # device-resident: into a fresh array (pageable; the copy completes before it returns)
                out[name] = np.empty(shape, t.dtype)
                cuda.copy_dtoh_async(out[name].ctypes.data, src, nbytes, self.stream)
        self.stream.synchronize()
        for name, shape in staged.items():
            view = self.tensors[name].host[:volume(shape)].reshape(shape)
            out[name] = view.copy() if copy else view
        return {n: out[n] for n in names}

    def run(self, feeds: dict[str, np.ndarray], *, copy: bool = True) -> dict[str, np.ndarray]:
        """One call with host arrays, entirely on this session's own buffers, one thread at a time."""
        with self.lock:
            self.bindings.own_everything(self.tensors)
            self.upload(feeds)
            self.enqueue()
            return self.download(copy=copy)

    def drop_graphs(self) -> None:
        with self.lock:
            graphs = self.graphs.clear()
            if graphs:
                self.stream.synchronize()
            for graph in graphs:
                graph.close()

    def close(self) -> None:
        if self.stream is not None and self.stream.stream is not None:
            self.stream.synchronize()
        for graph in self.graphs.clear():
            graph.close()
        for arena in (self.device, self.host, self.resident_arena):
            if arena is not None:
                arena.close()
        self.device = self.host = self.resident_arena = None
        if self.stream is not None:
            self.stream.close()
        # The context must go before its engine.
        self.context = None


class TensorRTBackend:
    """Runs a package's engines: one execution context (and stream, buffers, lock) per bucket."""

    name = "tensorrt"

    def __init__(self, manifest: Manifest, device: int = 0, *, cuda_graphs: bool = True, copy_outputs: bool = True,
                 runtime: str | None = None, lean_library: str | None = None):
        """runtime: "full" or "lean" to insist on one TensorRT runtime (default: full when installed);
        lean_library: libnvinfer_lean of the TensorRT that built --exclude-lean-runtime engines."""
        env = probe_environment(device, prefer=runtime, lean_library=lean_library)
        reason = unavailable_reason(manifest, env)
        if reason:
            raise PackageError(f"backend 'tensorrt' cannot run here: {reason}")
        trt = import_tensorrt(runtime)
        self.trt, self.device, self.copy_outputs = trt, device, copy_outputs
        cuda.set_device(device)
        self.logger = make_logger(trt)
        if hasattr(trt, "init_libnvinfer_plugins"):  # the full TensorRT only; the lean runtime has no plugin library
            trt.init_libnvinfer_plugins(self.logger, "")  # before any plan that uses a standard plugin is deserialized
        self.runtimes: list = []
        self.engines: dict[str, LoadedEngine] = {}
        self.sessions: dict[str, EngineSession] = {}
        layout = engine_layout(manifest)
        resident = device_resident_tensors(manifest.data)
        buckets = {b.name: b for b in manifest.buckets}
        try:
            for file, slots in engines_by_file(layout).items():
                parent, runtime_ = make_runtime(trt, self.logger, slots[0].entry, env)
                self.runtimes.append((parent, runtime_))
                loaded = self.engines[file] = LoadedEngine(trt, runtime_, self.logger, manifest, slots[0].entry)
                for slot in slots:
                    self.sessions[slot.bucket] = EngineSession(trt, loaded, self.logger, slot, buckets[slot.bucket],
                                                               manifest.inputs, manifest.outputs, resident,
                                                               cuda_graphs=cuda_graphs)
        except BaseException:
            self.close()
            raise
        self.sessions = {b: self.sessions[b] for b in buckets}

    def session(self, bucket: Bucket | str) -> EngineSession:
        return self.sessions[bucket if isinstance(bucket, str) else bucket.name]

    def run(self, feeds: dict[str, np.ndarray], bucket: Bucket) -> dict[str, np.ndarray]:
        return self.session(bucket).run(feeds, copy=self.copy_outputs)

    def close(self) -> None:
        for session in getattr(self, "sessions", {}).values():
            session.close()
        self.sessions = {}
        for loaded in getattr(self, "engines", {}).values():
            loaded.close()
        self.engines = {}
        self.runtimes = []
