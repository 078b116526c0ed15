"""The tiny runtime: load a trtcompile package and run it.

    model = trtcompile.runtime.load("out/minilm")          # TensorRT where it can, else ONNX Runtime
    outputs = model.run({"input_ids": ids, "attention_mask": mask})

Imports numpy only at module level; the backends import tensorrt/tensorrt_lean + cuda-python or
onnxruntime when chosen. Nothing from the compiler, torch or onnx is ever imported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trtcompile.runtime.checks import ValueRanges, generation_options
from trtcompile.runtime.manifest import Manifest, PackageError, read_manifest
from trtcompile.runtime.shapes import Bucket, InputError, TensorSpec, bucket_for

__all__ = ["BACKENDS", "BackendFallbackWarning", "Bucket", "InputError", "Model", "ModelClosedError", "PackageError",
           "RunError", "TensorSpec", "load"]

BACKENDS = ("auto", "tensorrt", "onnxruntime")


class RunError(PackageError):
    """The backend failed on a call that the manifest allows: the package does not hold what its
    manifest promises (e.g. a bucket edited beyond what the model supports)."""


class ModelClosedError(RuntimeError):
    """A Model used after close()."""


class Model:
    """A loaded package: validates every call against the manifest and runs it on a backend."""

    def __init__(self, manifest: Manifest, backend):
        self.manifest = manifest
        self.backend = backend
        self._backend_name = backend.name
        self.inputs: list[TensorSpec] = manifest.inputs
        self.outputs: list[TensorSpec] = manifest.outputs
        self.buckets: list[Bucket] = manifest.buckets
        self._value_ranges = ValueRanges(self.inputs)

    @property
    def backend_name(self) -> str:
        return self._backend_name

    def bucket_for(self, feeds: dict[str, np.ndarray]) -> Bucket:
        return bucket_for(self.buckets, self.inputs, feeds)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one call; raises InputError naming the input, value and allowed range on bad input,
        RunError (naming the bucket and shapes) when the backend fails on an allowed one."""
        self._check_open()
        bucket = self.bucket_for(feeds)
        self._value_ranges.check(feeds)
        try:
            return self.backend.run(feeds, bucket)
        except (InputError, PackageError, TimeoutError):  # TimeoutError: all slots busy (GenerationTimeout)
            raise
        except Exception as exc:  # noqa: BLE001 - ORT/TensorRT raise their own types; say what the call was
            raise self._run_error(exc, bucket, feeds) from exc

    def _run_error(self, exc: Exception, bucket: Bucket, feeds: dict[str, np.ndarray]) -> RunError:
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
        ranges = ", ".join(f"{d} {lo}..{hi}" for d, (lo, _, hi) in bucket.dims.items())
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return RunError(f"backend {self.backend_name!r} failed in bucket {bucket.name!r} ({ranges}) on {shapes}: "
                        f"{type(exc).__name__}: {first}. The inputs fit the manifest, so the package does not "
                        f"hold what its manifest promises: most likely a bucket reaches beyond what the model "
                        f"supports (e.g. more positions than it has) or a file was edited; recompile the "
                        f"package (`trtcompile compile`), with a profile inside the model's limits")

    def _check_open(self) -> None:
        if self.backend is None:
            raise ModelClosedError(f"this model ({str(self.manifest.root)!r}) was closed; "
                                   f"load the package again with trtcompile.runtime.load()")

    # Generation, for causal-LM packages (runtime/generate.py).
    _kv_cache = None  # generate.py's preallocated KV cache, reused across requests that fit (concat form)
    _scheduler = None  # runtime/scheduler.py's continuous-batching loop over the static cache

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 32, **options) -> np.ndarray:
        """Prompt + new tokens, [batch, prompt + steps]; options as in runtime.generate.generate."""
        from trtcompile.runtime.generate import generate

        self._check_open()
        max_new_tokens, options = generation_options(self.manifest, input_ids, max_new_tokens, options)
        try:
            return generate(self, input_ids, attention_mask, max_new_tokens, **options)
        except (InputError, PackageError, TimeoutError):  # TimeoutError: all slots busy (GenerationTimeout)
            raise
        except Exception as exc:  # noqa: BLE001 - the backend's own error types; say what the call was
            raise self._generation_error(exc, input_ids) from exc

    def stream(self, input_ids, attention_mask=None, max_new_tokens: int = 32, **options):
        """An iterator of the next token per sequence, [batch] int64 per step."""
        from trtcompile.runtime.generate import stream

        self._check_open()
        max_new_tokens, options = generation_options(self.manifest, input_ids, max_new_tokens, options)
        return self._guarded(stream(self, input_ids, attention_mask, max_new_tokens, **options), input_ids)

    def _guarded(self, steps, input_ids):
        """The steps, with a backend failure during decoding raised as RunError (close() still
        reaches the inner generator through `yield from`, so a cancelled stream frees its cache)."""
        try:
            yield from steps
        except (InputError, PackageError, TimeoutError):  # TimeoutError: all slots busy (GenerationTimeout)
            raise
        except Exception as exc:  # noqa: BLE001 - the backend's own error types
            raise self._generation_error(exc, input_ids) from exc

    def _generation_error(self, exc: Exception, input_ids) -> RunError:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        return RunError(f"backend {self.backend_name!r} failed while generating from input_ids of shape "
                        f"{list(np.shape(input_ids))}: {type(exc).__name__}: {first}. The request fits the manifest, "
                        f"so the package does not hold what its manifest promises (e.g. buckets beyond the model's "
                        f"positions, or an edited file); recompile the package")

    @property
    def slots(self) -> int | None:
        """Requests decoded at once (continuous batching), or None: one generate()/stream() at a time."""
        from trtcompile.runtime.generate import slots_of

        return slots_of(self)

    def submit(self, prompt_ids, max_new_tokens: int = 32, **options):
        """Queue one prompt; returns a request to iterate (new token ids) or cancel()."""
        from trtcompile.runtime.generate import submit

        return submit(self, prompt_ids, max_new_tokens, **options)

    def close(self) -> None:
        """Free the backend's sessions/engines and buffers; using the model afterwards is an error."""
        if self._scheduler is not None:
            self._scheduler.close()
            self._scheduler = None
        if self._kv_cache is not None:
            self._kv_cache.close()
            self._kv_cache = None
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class BackendFallbackWarning(UserWarning):
    """load(backend="auto") ran a package with TensorRT engines on ONNX Runtime; the message says why."""


TENSORRT_OPTIONS = {"device", "cuda_graphs", "copy_outputs", "runtime", "lean_library"}
ONNXRUNTIME_OPTIONS = {"providers", "threads", "spinning", "huge_pages"}


def tensorrt_unavailable_reason(manifest: Manifest, **options) -> str | None:
    """Why the TensorRT backend cannot run this package here, or None when it can (engine_check.py)."""
    from trtcompile.runtime.engine_check import probe_environment, unavailable_reason

    if not manifest.engines:
        return unavailable_reason(manifest, None)
    env = probe_environment(options.get("device", 0), prefer=options.get("runtime"),
                            lean_library=options.get("lean_library"))
    return unavailable_reason(manifest, env)


def _split_options(options: dict) -> tuple[dict, dict]:
    unknown = sorted(set(options) - TENSORRT_OPTIONS - ONNXRUNTIME_OPTIONS)
    if unknown:
        raise TypeError(f"load() got unknown backend option(s) {unknown}; the tensorrt backend takes "
                        f"{sorted(TENSORRT_OPTIONS)}, the onnxruntime backend {sorted(ONNXRUNTIME_OPTIONS)}")
    return ({k: v for k, v in options.items() if k in TENSORRT_OPTIONS},
            {k: v for k, v in options.items() if k in ONNXRUNTIME_OPTIONS})


def load(path: str | Path, backend: str = "auto", **backend_options) -> Model:
    """Load a package directory; `backend` is "auto", "tensorrt" or "onnxruntime".

    "auto" runs the TensorRT engines when this machine can (a TensorRT runtime that accepts them,
    a CUDA GPU they were built for, engines that deserialize); otherwise the same package's
    model.onnx on ONNX Runtime, with one BackendFallbackWarning saying why and what to rebuild
    (none for a package compiled without engines). "tensorrt" raises PackageError instead.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    manifest = read_manifest(path)
    if backend == "auto":
        from trtcompile.runtime.cuda import CudaError

        trt_options, ort_options = _split_options(backend_options)
        reason = tensorrt_unavailable_reason(manifest, **trt_options)
        if reason is None:
            from trtcompile.runtime.tensorrt_backend import TensorRTBackend

            try:
                return Model(manifest, TensorRTBackend(manifest, **trt_options))
            except (PackageError, CudaError) as exc:  # e.g. a plan that does not deserialize, out of memory
                reason = str(exc)
        from trtcompile.runtime.ort_backend import OnnxRuntimeBackend

        try:
            impl = OnnxRuntimeBackend(manifest, **ort_options)
        except PackageError as exc:
            raise PackageError(f"{exc}; and the TensorRT engines cannot run here either: {reason}") from exc
        if manifest.engines:
            import warnings

            warnings.warn(BackendFallbackWarning(
                f"running {str(path)!r} on ONNX Runtime (CPU), not its TensorRT engines: {reason}"), stacklevel=2)
        return Model(manifest, impl)
    if backend == "tensorrt":
        reason = tensorrt_unavailable_reason(manifest, **backend_options)
        if reason:
            raise PackageError(f"backend 'tensorrt' cannot run {str(path)!r}: {reason}; "
                               f"use backend='onnxruntime' or build engines on a machine with TensorRT and a GPU")
        from trtcompile.runtime.tensorrt_backend import TensorRTBackend

        impl = TensorRTBackend(manifest, **backend_options)
    else:
        from trtcompile.runtime.ort_backend import OnnxRuntimeBackend

        impl = OnnxRuntimeBackend(manifest, **backend_options)
    return Model(manifest, impl)
