"""The few CUDA runtime calls the TensorRT backend needs, through cuda-python 13.

cuda-python returns `(err, *values)` from every call instead of raising, so everything goes
through `check`, which turns an error code into a CudaError naming the call. Device and pinned
memory come in arenas: one cudaMalloc and one cudaMallocHost per bucket, carved into
256-byte-aligned slices, so a call never allocates.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

# TensorRT wants every tensor address 256-byte aligned; cudaMalloc guarantees it for an arena's
# base, `layout` (buffers.py) for every slice inside it.
from trtcompile.runtime.buffers import ALIGNMENT, align, layout  # noqa: E402,F401  (cuda.layout for callers)


class CudaError(RuntimeError):
    """A CUDA runtime call failed; the message names the call and CUDA's error name."""


def _cudart():
    from cuda.bindings import runtime as cudart

    return cudart


def error_text(err) -> str:
    cudart = _cudart()
    name = cudart.cudaGetErrorName(err)[1]
    text = cudart.cudaGetErrorString(err)[1]
    decode = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else str(b)  # noqa: E731
    return f"{decode(name)} ({decode(text)})"


def check(result, call: str = "CUDA call"):
    """Unwrap cuda-python's (err, *values): raise CudaError on error, else return the value(s)."""
    cudart = _cudart()
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        raise CudaError(f"{call} failed: {error_text(err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def cuda_problem(device: int = 0) -> str | None:
    """Why no CUDA GPU can be used here (cuda-python missing, no driver, no device), or None."""
    try:
        cudart = _cudart()
    except ImportError:
        return "cuda-python is not installed (pip install 'cuda-python>=12.6')"
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess:
        return f"no usable CUDA GPU: cudaGetDeviceCount failed with {error_text(err)}"
    if count == 0:
        return "no CUDA GPU: cudaGetDeviceCount found 0 devices"
    if device >= count:
        return f"CUDA device {device} does not exist (this machine has {count}: 0..{count - 1})"
    return None


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "9.0"


def device_info(device: int = 0) -> DeviceInfo:
    cudart = _cudart()
    props = check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return DeviceInfo(str(name).strip(), f"{props.major}.{props.minor}")


def set_device(device: int) -> None:
    cudart = _cudart()
    check(cudart.cudaSetDevice(device), f"cudaSetDevice({device})")


class Stream:
    """A non-blocking stream of its own: TensorRT syncs the whole device on the legacy default stream."""

    def __init__(self):
        cudart = _cudart()
        self.stream = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking),
                            "cudaStreamCreateWithFlags")

    @property
    def handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        cudart = _cudart()
        check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        if self.stream is not None:
            cudart = _cudart()
            check(cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            self.stream = None


class DeviceArena:
    """One device allocation; `ptr + offset` addresses a tensor."""

    def __init__(self, nbytes: int):
        cudart = _cudart()
        self.nbytes = nbytes
        self.ptr = int(check(cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))

    def close(self) -> None:
        if self.ptr:
            cudart = _cudart()
            check(cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class PinnedArena:
    """One page-locked host allocation, seen from numpy as bytes; async copies need pinned memory."""

    def __init__(self, nbytes: int):
        cudart = _cudart()
        self.nbytes = nbytes
        self.ptr = int(check(cudart.cudaMallocHost(nbytes), f"cudaMallocHost({nbytes})"))
        self.bytes = np.frombuffer((ctypes.c_char * nbytes).from_address(self.ptr), dtype=np.uint8)

    def view(self, offset: int, nbytes: int, dtype) -> np.ndarray:
        return self.bytes[offset:offset + nbytes].view(dtype)

    def close(self) -> None:
        if self.ptr:
            cudart = _cudart()
            self.bytes = None
            check(cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


def copy_htod_async(dst: int, src: int, nbytes: int, stream: Stream) -> None:
    cudart = _cudart()
    check(cudart.cudaMemcpyAsync(dst, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream.stream),
          "cudaMemcpyAsync(host to device)")


def copy_dtoh_async(dst: int, src: int, nbytes: int, stream: Stream) -> None:
    cudart = _cudart()
    check(cudart.cudaMemcpyAsync(dst, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream.stream),
          "cudaMemcpyAsync(device to host)")


def copy_dtod_async(dst: int, src: int, nbytes: int, stream: Stream) -> None:
    cudart = _cudart()
    check(cudart.cudaMemcpyAsync(dst, src, nbytes, cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice, stream.stream),
          "cudaMemcpyAsync(device to device)")


class Graph:
    """A captured, instantiated CUDA graph of whatever `enqueue()` puts on the stream."""

    def __init__(self, exec_):
        self.exec = exec_

    @classmethod
    def capture(cls, stream: Stream, enqueue) -> "Graph | None":
        """Capture `enqueue()` (which returns False on failure); None when it cannot be captured.

        Follows trtexec's TrtCudaGraph (NVIDIA/TensorRT samples/common/sampleDevice.h): thread-local
        mode, so other threads' CUDA calls neither break nor join this capture; a failed capture is
        ended, its graph destroyed and the error cleared, so the stream works uncaptured afterwards.
        """
        cudart = _cudart()
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(cudart.cudaStreamBeginCapture(stream.stream, mode), "cudaStreamBeginCapture")
        try:
            ok = enqueue()
        except Exception:
            ok = False
        err, graph = cudart.cudaStreamEndCapture(stream.stream)
        if not ok or err != cudart.cudaError_t.cudaSuccess or graph is None:
            cudart.cudaGetLastError()  # clear the sticky-until-read capture error
            if err == cudart.cudaError_t.cudaSuccess and graph is not None:
                cudart.cudaGraphDestroy(graph)
            return None
        try:
            err, exec_ = cudart.cudaGraphInstantiate(graph, 0)
        finally:
            cudart.cudaGraphDestroy(graph)  # the executable graph keeps what it needs
        if err != cudart.cudaError_t.cudaSuccess:
            cudart.cudaGetLastError()
            return None
        return cls(exec_)

    def launch(self, stream: Stream) -> None:
        cudart = _cudart()
        check(cudart.cudaGraphLaunch(self.exec, stream.stream), "cudaGraphLaunch")

    def close(self) -> None:
        if self.exec is not None:
            cudart = _cudart()
            check(cudart.cudaGraphExecDestroy(self.exec), "cudaGraphExecDestroy")
            self.exec = None
