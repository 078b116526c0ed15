"""The package's ONNX graph as TensorRT's parser gets it.

One graph serves both backends, except for what only ONNX Runtime on CPU needs: the static cache's
whole-cache `If` per layer (passes/read_cache_in_place.py) exists because ORT's Slice copies. For
TensorRT each such `If` is replaced by its prefix-read branch before parsing, in a temporary file
beside the model (its external weights are found relative to the model's folder), removed once
the parser has read it. A graph with nothing to change is parsed as it is.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def tensorrt_model(onnx_path: Path):
    """(the graph TensorRT gets, without its weights; how many cache-read Ifs it lost)."""
    import onnx

    from trtcompile.passes.read_cache_in_place import inline_prefix_reads

    model = onnx.load(str(onnx_path), load_external_data=False)
    return model, inline_prefix_reads(model)


def import_check(onnx_path: Path) -> list[str]:
    """What TensorRT's parser is documented to reject in the graph it would get (build/tensorrt_rules.py)."""
    from trtcompile.build.tensorrt_rules import import_problems

    return import_problems(tensorrt_model(onnx_path)[0], base_dir=str(Path(onnx_path).parent))


@contextlib.contextmanager
def graph_for_tensorrt(onnx_path: Path, model=None, inlined: int | None = None):
    """Yields the path TensorRT should parse: `onnx_path` itself, or a rewritten copy beside it
    (`model`, `inlined`: tensorrt_model's result when the caller has it already)."""
    import onnx

    onnx_path = Path(onnx_path)
    if model is None:
        model, inlined = tensorrt_model(onnx_path)
    if not inlined:
        yield onnx_path
        return
    variant = onnx_path.with_name(f".{onnx_path.stem}.tensorrt.{os.getpid()}.onnx")
    try:
        onnx.save(model, str(variant))
        yield variant
    finally:
        variant.unlink(missing_ok=True)
