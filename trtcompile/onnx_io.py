"""Loading and saving ONNX models, and moving between onnx and onnx-graphsurgeon.

Two pitfalls live here so nothing else has to know them: onnx 1.23 stamps IR version 14, which
ONNX Runtime 1.31 cannot load (polygraphy's folding then silently does nothing), and protobuf
cannot serialize a model over 2 GB without external data.
A model whose weights stay on disk (a lazy model, lazy_weights.py) goes through the same
functions: to_graph, to_model and save_model keep its weights where they are.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_graphsurgeon as gs

from trtcompile.errors import UserError

# The newest IR version ONNX Runtime 1.31 loads; opset 23 models are valid at it.
MAX_IR_VERSION = 10
_PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: str | Path, *, load_weights: bool = True) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {str(path)!r} does not exist", hint="check the path")
    try:
        return onnx.load(str(path), load_external_data=load_weights)
    except Exception as exc:
        raise UserError(f"{str(path)!r} is not a readable ONNX model: {exc}",
                        hint="re-export it, or pass a Hugging Face checkpoint directory") from exc


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    from trtcompile.lazy_weights import attach_weights

    return attach_weights(_import(model), model)


def _import(model: onnx.ModelProto) -> gs.Graph:
    if any(t.data_type in _NO_NUMPY_TYPES for t in model.graph.initializer):
        # FP8 weights: onnx-graphsurgeon warns that numpy has no such type, and keeps them intact.
        severity = gs.logger.G_LOGGER.severity
        gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.ERROR
        try:
            return gs.import_onnx(model)
        finally:
            gs.logger.G_LOGGER.severity = severity
    return gs.import_onnx(model)


_NO_NUMPY_TYPES = {onnx.TensorProto.FLOAT8E4M3FN, onnx.TensorProto.FLOAT8E5M2}


def to_model(graph: gs.Graph, **kwargs) -> onnx.ModelProto:
    """The graph as a model; a graph with weights on disk gives a lazy model (references kept)."""
    _repack_narrow_constants(graph)
    model = gs.export_onnx(graph, **kwargs)
    from trtcompile.lazy_weights import graph_weights_dir, set_weights_dir

    set_weights_dir(model, graph_weights_dir(graph))
    return fix_ir_version(model)


def _repack_narrow_constants(graph: gs.Graph) -> None:
    """INT4/UINT4/FLOAT8 constants whose values were read into numpy (ml_dtypes, one byte per value)
    go back to onnx tensors: onnx-graphsurgeon would write the bytes unpacked under a 4-bit type."""
    from onnx import numpy_helper

    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and not isinstance(tensor._values, gs.ir.tensor.LazyValues):
            dtype = tensor.values.dtype
            if dtype.kind == "V" or dtype.name in ("int4", "uint4", "float8_e4m3fn", "float8_e5m2"):
                tensor._values = gs.ir.tensor.LazyValues(numpy_helper.from_array(tensor.values, tensor.name))


def fix_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def save_model(model: onnx.ModelProto, path: str | Path, *, external_above: int = _PROTOBUF_LIMIT,
               keep_weights: bool = True) -> Path:
    """Save, with weights in one external file beside it (`NAME.data`) when the model is over
    `external_above` bytes (protobuf's 2 GB limit by default).

    Writing external data moves the weights out of the in-memory model; with keep_weights they are
    read back, otherwise the caller gets a weightless model (the package writer, which is done with
    it: that is what keeps a compile's peak memory from holding two copies).
    """
    path = Path(path)
    fix_ir_version(model)
    data = path.parent / (path.name + ".data")
    data.unlink(missing_ok=True)
    from trtcompile.lazy_weights import save_lazy, weights_dir

    if weights_dir(model) is not None:
        return save_lazy(model, path, data, min(external_above, _PROTOBUF_LIMIT))
    if model.ByteSize() >= min(external_above, _PROTOBUF_LIMIT):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        if keep_weights:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(path.parent))
    else:
        onnx.save_model(model, str(path))
    return path


def release_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it otherwise, and RSS never falls after a stage)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


# ONNX element types the inputs/outputs of a package may have, as numpy dtype names.
ONNX_DTYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                    11: "float64", 16: "bfloat16"}


def op_histogram(model_or_graph) -> dict[str, int]:
    nodes = model_or_graph.graph.node if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph.nodes
    counts: dict[str, int] = {}
    for n in nodes:
        op = n.op_type if isinstance(model_or_graph, onnx.ModelProto) else n.op
        counts[op] = counts.get(op, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
