"""The TensorRT backend's pure logic on CPU, and its CUDA half where a GPU is present.

Running real engines needs the full TensorRT to build them: those end-to-end tests live in
tests/build/test_engine.py; engine checks and the auto fallback in test_engine_check.py; buffer
sizing and ownership in test_buffers.py; the CUDA-graph policy in test_graph_cache.py; the GPU
checks that need no TensorRT in test_cuda_gpu.py. Nothing here stands in for TensorRT; the TensorRT types used are
the real `tensorrt_lean` ones.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from trtcompile.runtime import cuda
from trtcompile.runtime.manifest import Manifest, PackageError
from trtcompile.runtime.shapes import Bucket, TensorSpec
from trtcompile.runtime.tensorrt_backend import TensorRTBackend, environment_problem, max_shapes, numpy_dtype

CUDA_PROBLEM = cuda.cuda_problem()
needs_gpu = pytest.mark.skipif(CUDA_PROBLEM is not None, reason=f"needs a CUDA GPU: {CUDA_PROBLEM}")


def test_numpy_dtypes_of_real_tensorrt_types():
    trt = pytest.importorskip("tensorrt_lean", reason="tensorrt_lean is not installed (pip install tensorrt-lean-cu13)")
    assert numpy_dtype(trt.DataType.FLOAT) == np.float32
    assert numpy_dtype(trt.DataType.HALF) == np.float16
    assert numpy_dtype(trt.DataType.INT64) == np.int64
    assert numpy_dtype(trt.DataType.BOOL) == np.bool_
    with pytest.raises(PackageError, match="BF16 has no numpy equivalent"):
        numpy_dtype(trt.DataType.BF16)


def test_buffers_are_sized_at_the_bucket_max():
    bucket = Bucket("long", {"batch": (1, 2, 4), "sequence": (1, 64, 128), "past": (0, 0, 32)})
    specs = [TensorSpec("ids", "int64", ["batch", "sequence"]),
             TensorSpec("mask", "int64", ["batch", "sequence+past"]),
             TensorSpec("hidden", "float32", ["batch", "sequence", 384]),
             TensorSpec("boxes", "float32", ["num_boxes", 4])]  # data-dependent: TensorRT's max is used
    assert max_shapes(specs, bucket) == {"ids": (4, 128), "mask": (4, 160), "hidden": (4, 128, 384)}


def test_arena_layout_is_aligned_and_disjoint():
    offsets, total = cuda.layout({"a": 10, "b": 256, "c": 0, "d": 257})
    assert offsets == {"a": 0, "b": 256, "c": 512, "d": 768}
    assert total == 1280 and all(o % cuda.ALIGNMENT == 0 for o in offsets.values())
    assert cuda.layout({}) == ({}, cuda.ALIGNMENT)


def test_environment_problem_names_the_missing_piece():
    problem = environment_problem()
    if problem is None:
        pytest.skip("TensorRT and a GPU are present: nothing is missing")
    if CUDA_PROBLEM:
        assert CUDA_PROBLEM in problem
    assert len(problem) > 20


def test_backend_refuses_to_start_without_its_environment(tmp_path):
    problem = environment_problem()
    if problem is None:
        pytest.skip("TensorRT and a GPU are present")
    engine = {"file": "engines/model.plan", "tensorrt_version": "11.4.0.106", "compute_capability": "9.0",
              "profiles": [], "build_flags": {"version_compatible": True}}
    manifest = Manifest(tmp_path, {"schema_version": 1, "inputs": [], "outputs": [], "buckets": [],
                                   "engines": [engine]})
    with pytest.raises(PackageError, match="cannot run here") as info:
        TensorRTBackend(manifest)
    assert problem in str(info.value)


def test_cuda_wrappers_reach_the_real_driver_api_without_a_gpu():
    # Without a GPU every call returns an error code: getting CudaError naming the call (not a
    # TypeError) shows each wrapper passes arguments cuda-python accepts and unpacks its result.
    if CUDA_PROBLEM is None:
        pytest.skip("a GPU is present: the GPU tests below cover these calls")
    from cuda.bindings import runtime as cudart

    for make, call in [(cuda.Stream, "cudaStreamCreateWithFlags"),
                       (lambda: cuda.DeviceArena(1024), "cudaMalloc"),
                       (lambda: cuda.PinnedArena(1024), "cudaMallocHost"),
                       (lambda: cuda.set_device(0), "cudaSetDevice"),
                       (lambda: cuda.device_info(0), "cudaGetDeviceProperties")]:
        with pytest.raises(cuda.CudaError, match=f"{call}.* failed: cudaError"):
            make()
    stream = cuda.Stream.__new__(cuda.Stream)
    stream.stream = cudart.cudaStream_t(0)  # a handle value; no stream could be created here
    for copy in (cuda.copy_htod_async, cuda.copy_dtoh_async, cuda.copy_dtod_async):
        with pytest.raises(cuda.CudaError, match="cudaMemcpyAsync"):
            copy(256, 512, 16, stream)
    with pytest.raises(cuda.CudaError, match="cudaStreamBeginCapture"):
        cuda.Graph.capture(stream, lambda: True)
    with pytest.raises(cuda.CudaError, match="cudaStreamSynchronize"):
        stream.synchronize()


def test_tensorrt_errors_reach_the_backend_logger():
    # The real tensorrt_lean Runtime, created without a GPU, reports its CUDA failure through the
    # logger. The half-made runtime crashes on teardown, so this runs in a child that skips it.
    if CUDA_PROBLEM is None:
        pytest.skip("a GPU is present: the runtime would start without errors")
    pytest.importorskip("tensorrt_lean", reason="tensorrt_lean is not installed (pip install tensorrt-lean-cu13)")
    code = ("import os, tensorrt_lean as trt\n"
            "from trtcompile.runtime.tensorrt_backend import make_logger\n"
            "logger = make_logger(trt)\n"
            "runtime = trt.Runtime(logger)\n"
            "print(logger.take_errors(), flush=True)\n"
            "os._exit(0)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "CUDA" in out.stdout and "[TensorRT] ERROR" in out.stderr


def test_runtime_backend_imports_nothing_from_the_compiler():
    code = (
        "import sys, json\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'onnxruntime', 'transformers'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import trtcompile.runtime.tensorrt_backend as b\n"
        "b.environment_problem()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('trtcompile'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert [m for m in loaded if m != "trtcompile" and not m.startswith("trtcompile.runtime")] == []


@pytest.mark.gpu
@needs_gpu
def test_pinned_and_device_arenas_round_trip_through_a_stream():
    stream = cuda.Stream()
    offsets, total = cuda.layout({"x": 4 * 1000, "y": 4 * 1000})
    device, host = cuda.DeviceArena(total), cuda.PinnedArena(total)
    try:
        x = host.view(offsets["x"], 4000, np.float32)
        y = host.view(offsets["y"], 4000, np.float32)
        x[:] = np.arange(1000, dtype=np.float32)
        cuda.copy_htod_async(device.ptr + offsets["x"], host.ptr + offsets["x"], 4000, stream)
        cuda.copy_dtod_async(device.ptr + offsets["y"], device.ptr + offsets["x"], 4000, stream)
        cuda.copy_dtoh_async(host.ptr + offsets["y"], device.ptr + offsets["y"], 4000, stream)
        stream.synchronize()
        np.testing.assert_array_equal(y, x)
    finally:
        device.close(), host.close(), stream.close()


@pytest.mark.gpu
@needs_gpu
def test_cuda_graph_capture_replays_the_captured_copy():
    stream = cuda.Stream()
    device, host = cuda.DeviceArena(512), cuda.PinnedArena(512)
    try:
        src, dst = host.view(0, 16, np.int32), host.view(256, 16, np.int32)

        def enqueue():
            cuda.copy_htod_async(device.ptr, host.ptr, 16, stream)
            cuda.copy_dtoh_async(host.ptr + 256, device.ptr, 16, stream)
            return True

        graph = cuda.Graph.capture(stream, enqueue)
        assert graph is not None
        src[:] = [1, 2, 3, 4]
        graph.launch(stream)
        stream.synchronize()
        np.testing.assert_array_equal(dst, [1, 2, 3, 4])
        graph.close()
        assert cuda.Graph.capture(stream, lambda: False) is None  # a failed enqueue falls back
        cuda.copy_htod_async(device.ptr, host.ptr, 16, stream)  # and the stream still works
        stream.synchronize()
    finally:
        device.close(), host.close(), stream.close()


@pytest.mark.gpu
@needs_gpu
def test_device_info_reads_name_and_compute_capability():
    info = cuda.device_info(0)
    assert info.name and info.compute_capability.count(".") == 1
