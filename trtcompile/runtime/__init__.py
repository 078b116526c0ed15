"""The tiny runtime: load a trtcompile package and run it.

    model = trtcompile.runtime.load("out/minilm")          # TensorRT where it can, else ONNX Runtime
    outputs = model.run({"input_ids": ids, "attention_mask": mask})

Imports numpy only at module level; the backends import tensorrt/tensorrt_lean + cuda-python or
onnxruntime when chosen. Nothing from the compiler, torch or onnx is ever imported here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trtcompile.runtime.manifest import Manifest, PackageError, read_manifest
from trtcompile.runtime.shapes import Bucket, InputError, TensorSpec, bucket_for

__all__ = ["BACKENDS", "Bucket", "InputError", "Model", "PackageError", "TensorSpec", "load"]

BACKENDS = ("auto", "tensorrt", "onnxruntime")


class Model:
    """A loaded package: validates every call against the manifest and runs it on a backend."""

    def __init__(self, manifest: Manifest, backend):
        self.manifest = manifest
        self.backend = backend
        self.inputs: list[TensorSpec] = manifest.inputs
        self.outputs: list[TensorSpec] = manifest.outputs
        self.buckets: list[Bucket] = manifest.buckets

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def bucket_for(self, feeds: dict[str, np.ndarray]) -> Bucket:
        return bucket_for(self.buckets, self.inputs, feeds)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one call; raises InputError naming the input, value and allowed range on bad input."""
        return self.backend.run(feeds, self.bucket_for(feeds))

    # Generation, for causal-LM packages (runtime/generate.py).
    _kv_cache = None  # generate.py's preallocated KV cache, reused across requests that fit

    def generate(self, input_ids, attention_mask=None, max_new_tokens: int = 32, **options) -> np.ndarray:
        """Prompt + new tokens, [batch, prompt + steps]; options as in runtime.generate.generate."""
        from trtcompile.runtime.generate import generate

        return generate(self, input_ids, attention_mask, max_new_tokens, **options)

    def stream(self, input_ids, attention_mask=None, max_new_tokens: int = 32, **options):
        """An iterator of the next token per sequence, [batch] int64 per step."""
        from trtcompile.runtime.generate import stream

        return stream(self, input_ids, attention_mask, max_new_tokens, **options)

    def close(self) -> None:
        if self._kv_cache is not None:
            self._kv_cache.close()
            self._kv_cache = None
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def tensorrt_unavailable_reason(manifest: Manifest) -> str | None:
    """Why the TensorRT backend cannot run this package here, or None when it can."""
    if not manifest.engines:
        reason = manifest.data.get("build", {}).get("engines_skipped", "it was compiled without engines")
        return f"the package has no TensorRT engines ({reason})"
    from trtcompile.runtime.tensorrt_backend import environment_problem

    return environment_problem()


def load(path: str | Path, backend: str = "auto", **backend_options) -> Model:
    """Load a package directory; `backend` is "auto" (TensorRT when possible), "tensorrt" or "onnxruntime"."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {BACKENDS}")
    manifest = read_manifest(path)
    if backend == "auto":
        backend = "onnxruntime" if tensorrt_unavailable_reason(manifest) else "tensorrt"
    if backend == "tensorrt":
        reason = tensorrt_unavailable_reason(manifest)
        if reason:
            raise PackageError(f"backend 'tensorrt' cannot run {str(path)!r}: {reason}; "
                               f"use backend='onnxruntime' or build engines on a machine with TensorRT and a GPU")
        from trtcompile.runtime.tensorrt_backend import TensorRTBackend

        impl = TensorRTBackend(manifest, **backend_options)
    else:
        from trtcompile.runtime.ort_backend import OnnxRuntimeBackend

        impl = OnnxRuntimeBackend(manifest, **backend_options)
    return Model(manifest, impl)
