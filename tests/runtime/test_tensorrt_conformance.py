"""Every TensorRT and CUDA runtime attribute the TensorRT backend uses exists in the real bindings.

The backend cannot run here (no GPU, no full TensorRT), so this is what keeps a typo such as
`execute_async_v2` or a TensorRT 11 removal such as `BuilderFlag.FP16` out of it: the module's
source is parsed, and each `trt.X.Y` chain and each attribute used on an engine, context or
runtime must resolve on the installed `tensorrt_lean` (the same runtime API as `tensorrt`), and
each `cudart.X` on cuda-python's runtime bindings.
"""

from __future__ import annotations

import pytest
from trt_conformance import attribute_chains, missing_in, module_uses, receiver_uses, source_of

from trtcompile.runtime import cuda as cuda_module
from trtcompile.runtime import engine_check, plan_reader, tensorrt_backend

try:
    import tensorrt_lean as trt
except (ImportError, OSError) as exc:  # pragma: no cover - CI installs it through the `test` extra
    trt = None
    TRT_SKIP = f"tensorrt_lean does not import ({exc}); pip install tensorrt-lean-cu13"
else:
    TRT_SKIP = ""

try:
    from cuda.bindings import runtime as cudart
except ImportError as exc:  # pragma: no cover
    cudart = None
    CUDA_SKIP = f"cuda-python does not import ({exc}); pip install cuda-python"
else:
    CUDA_SKIP = ""

needs_trt = pytest.mark.skipif(trt is None, reason=TRT_SKIP)
needs_cudart = pytest.mark.skipif(cudart is None, reason=CUDA_SKIP)

# Names the backend gives TensorRT objects, and their classes in the bindings.
RECEIVERS = {"engine": "ICudaEngine", "context": "IExecutionContext", "runtime": "Runtime"}

# Written out as well as read from the source: if the source scan ever stopped finding these, the
# scan is broken (and the explicit list still checks the bindings).
EXPLICIT = {
    ("Runtime",), ("ILogger",), ("ILogger", "Severity", "ERROR"),
    ("ILogger", "Severity", "INTERNAL_ERROR"), ("ILogger", "Severity", "WARNING"),
    ("TensorIOMode", "INPUT"), ("Runtime", "deserialize_cuda_engine"), ("Runtime", "engine_host_code_allowed"),
    ("ICudaEngine", "num_io_tensors"), ("ICudaEngine", "get_tensor_name"), ("ICudaEngine", "get_tensor_mode"),
    ("ICudaEngine", "get_tensor_dtype"), ("ICudaEngine", "get_tensor_profile_shape"),
    ("ICudaEngine", "is_shape_inference_io"), ("ICudaEngine", "create_execution_context"),
    ("IExecutionContext", "set_input_shape"), ("IExecutionContext", "infer_shapes"),
    ("IExecutionContext", "set_tensor_address"), ("IExecutionContext", "execute_async_v3"),
    ("IExecutionContext", "get_tensor_shape"),
    # shared engines: one context per profile, activation memory per profile
    ("ICudaEngine", "num_optimization_profiles"), ("ICudaEngine", "get_device_memory_size_for_profile_v2"),
    ("IExecutionContext", "set_optimization_profile_async"), ("ExecutionContextAllocationStrategy", "ON_PROFILE_CHANGE"),
    # --exclude-lean-runtime engines from another version; plans streamed from the file
    ("Runtime", "load_runtime"), ("IStreamReaderV2",), ("SeekPosition", "SET"), ("SeekPosition", "CUR"),
    ("SeekPosition", "END"),
    # outputs written in place (KV-cache update) share their input's buffer
    ("ICudaEngine", "get_aliased_input_tensor"),
}
# Used by the runtime, absent from tensorrt_lean because it belongs to the full TensorRT only; each
# checked against NVIDIA/TensorRT's bindings source (python/src/infer/pyPlugin.cpp:
# m.def("init_libnvinfer_plugins", &initLibNvInferPlugins, "logger"_a, "namespace"_a)). The code
# calls it only where hasattr(trt, ...) says it is there.
FULL_ONLY_REVIEWED = {("init_libnvinfer_plugins",)}
# The modules that touch TensorRT objects at run time.
RUNTIME_MODULES = (tensorrt_backend, plan_reader, engine_check)
EXPLICIT_CUDART = {
    "cudaGetDeviceCount", "cudaGetErrorName", "cudaGetErrorString", "cudaGetDeviceProperties", "cudaSetDevice",
    "cudaStreamCreateWithFlags", "cudaStreamNonBlocking", "cudaStreamSynchronize", "cudaStreamDestroy",
    "cudaMalloc", "cudaFree", "cudaMallocHost", "cudaFreeHost", "cudaMemcpyAsync", "cudaStreamBeginCapture",
    "cudaStreamEndCapture", "cudaGraphInstantiate", "cudaGraphLaunch", "cudaGraphDestroy", "cudaGraphExecDestroy",
    "cudaGetLastError",
}


def backend_trt_uses() -> set[tuple[str, ...]]:
    uses = set()
    for module in RUNTIME_MODULES:
        chains = attribute_chains(source_of(module))
        uses |= module_uses(chains, "trt")
        uses |= {(cls, attr) for cls, attr in receiver_uses(chains, RECEIVERS)}
    return uses


def cuda_uses() -> set[tuple[str, ...]]:
    return module_uses(attribute_chains(source_of(cuda_module), {"_cudart": "cudart"}), "cudart")


@needs_trt
def test_every_tensorrt_attribute_the_backend_uses_exists():
    uses = backend_trt_uses()
    assert len(uses) >= 20, f"the source scan found too little to be working: {sorted(uses)}"
    missing = missing_in(trt, uses - FULL_ONLY_REVIEWED)
    assert not missing, f"not in tensorrt_lean {trt.__version__}: {missing}"
    assert FULL_ONLY_REVIEWED <= uses, "a reviewed full-TensorRT-only name is no longer used: drop it from the list"
    assert missing_in(trt, FULL_ONLY_REVIEWED) == sorted(".".join(u) for u in FULL_ONLY_REVIEWED), \
        "tensorrt_lean has it now: check it like the rest"


@needs_trt
def test_overloads_the_backend_relies_on_exist():
    # deserialize_cuda_engine takes an IStreamReaderV2, create_execution_context an allocation strategy.
    assert "IStreamReaderV2" in trt.Runtime.deserialize_cuda_engine.__doc__
    assert "ExecutionContextAllocationStrategy" in trt.ICudaEngine.create_execution_context.__doc__
    # The stream reader overrides exactly what the base declares; TensorRT calls read(size, stream) and seek.
    source = source_of(plan_reader)
    assert "def read(self, num_bytes, stream)" in source and "def seek(self, offset, where)" in source
    assert hasattr(trt.IStreamReaderV2, "read") and hasattr(trt.IStreamReaderV2, "seek")


@needs_trt
def test_explicit_list_exists_and_is_what_the_scan_finds():
    assert not missing_in(trt, EXPLICIT), f"not in tensorrt_lean {trt.__version__}: {missing_in(trt, EXPLICIT)}"
    unscanned = EXPLICIT - backend_trt_uses()
    assert not unscanned, f"the source scan missed {sorted(unscanned)}"


@needs_trt
def test_dtype_table_names_real_tensorrt_types():
    missing = [name for name in tensorrt_backend.NUMPY_DTYPES if not hasattr(trt.DataType, name)]
    assert not missing, f"DataType has no {missing}"


@needs_trt
def test_backend_method_overrides_exist_on_the_tensorrt_base_classes():
    # make_logger subclasses trt.ILogger and overrides `log`; TensorRT calls only what the base declares.
    assert hasattr(trt.ILogger, "log")
    logger = tensorrt_backend.make_logger(trt)  # real pybind base class; no GPU needed
    logger.log(trt.ILogger.Severity.ERROR, "conformance probe")
    assert logger.take_errors() == "conformance probe"


@needs_trt
def test_the_check_fails_on_a_typo_and_on_a_removed_api():
    source = ("def f(context, stream):\n"
              "    context.execute_async_v2(stream)\n"
              "    context.execute_async_v3(stream)\n"
              "    return trt.BuilderFlag.FP16, trt.TensorIOMode.INPUT\n")
    chains = attribute_chains(source)
    uses = module_uses(chains, "trt") | receiver_uses(chains, RECEIVERS)
    assert missing_in(trt, uses) == ["BuilderFlag.FP16", "IExecutionContext.execute_async_v2"]


@needs_cudart
def test_every_cuda_runtime_call_exists():
    uses = cuda_uses()
    assert {(name,) for name in EXPLICIT_CUDART} <= uses, \
        f"the scan missed {sorted(EXPLICIT_CUDART - {u[0] for u in uses})}"
    assert not missing_in(cudart, uses), f"not in cuda.bindings.runtime: {missing_in(cudart, uses)}"


@needs_cudart
def test_cuda_check_fails_on_a_typo():
    chains = attribute_chains("cudart = _cudart()\ncudart.cudaMemcpyAsyncc(1, 2, 3)\n_cudart().cudaFree(0)\n",
                              {"_cudart": "cudart"})
    assert missing_in(cudart, module_uses(chains, "cudart")) == ["cudaMemcpyAsyncc"]


@needs_cudart
def test_device_properties_have_the_fields_device_info_reads():
    props = cudart.cudaDeviceProp()  # what cudaGetDeviceProperties returns; constructible without a GPU
    for field in ("name", "major", "minor"):
        assert hasattr(props, field), f"cudaDeviceProp has no {field}"
