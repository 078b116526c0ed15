"""Loading and saving ONNX models, and moving between onnx and onnx-graphsurgeon.

Two pitfalls live here so nothing else has to know them: onnx 1.23 stamps IR version 14, which
ONNX Runtime 1.31 cannot load (polygraphy's folding then silently does nothing), and protobuf
cannot serialize a model over 2 GB without external data.

Compile keeps a large model's weights on disk (`lazy` models): export writes them as external data
into a work directory, the in-memory model holds only references (the metadata entry
WEIGHTS_DIR_KEY says where they are), a pass reads a weight only when it needs its values
(ExternalValues), and what a pass creates is written back out (spill_constants) before the next
pass runs. Saving copies the weights file to file, in chunks. So no stage holds the whole model
twice, and no stage but the verifying ONNX Runtime session holds it once.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
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


def load_lazy(path: str | Path) -> onnx.ModelProto:
    """The model without its external weights, which stay in their files until a pass reads them."""
    model = load_model(path, load_weights=False)
    if any(_is_external(t) for t in _all_tensors(model)):
        set_weights_dir(model, Path(path).resolve().parent)
    return model


# Metadata entry of a lazy model: the directory its external data locations are relative to.
WEIGHTS_DIR_KEY = "trtcompile.weights_dir"
# Constants a pass creates above this size go to the weights directory after the pass.
SPILL_MIN_BYTES = 1 << 20
_SPILL_FILE = "spilled.data"
_ALIGN = 4096
_INLINE_BELOW = 1024  # bytes; smaller tensors stay in the protobuf (onnx's own default threshold)  # ONNX Runtime maps external data whose offset is page-aligned instead of copying it


def weights_dir(model: onnx.ModelProto) -> Path | None:
    for prop in model.metadata_props:
        if prop.key == WEIGHTS_DIR_KEY:
            return Path(prop.value)
    return None


def set_weights_dir(model: onnx.ModelProto, directory: Path | None) -> None:
    for prop in list(model.metadata_props):
        if prop.key == WEIGHTS_DIR_KEY:
            model.metadata_props.remove(prop)
    if directory is not None:
        model.metadata_props.add(key=WEIGHTS_DIR_KEY, value=str(directory))


@contextmanager
def inside_weights_dir(directory: Path | None):
    """Run ONNX Runtime on a serialized lazy model: it resolves external data from the current
    directory, and refuses absolute locations."""
    if directory is None:
        yield
        return
    before = os.getcwd()
    os.chdir(directory)
    try:
        yield
    finally:
        os.chdir(before)


class ExternalValues(gs.ir.tensor.LazyValues):
    """A constant whose values are in an external data file; read (once) when a pass asks for them.

    onnx-graphsurgeon exports a LazyValues' tensor proto as it is, so a weight no pass touched is
    written back as the same reference, never read."""

    def __init__(self, tensor: onnx.TensorProto, base_dir: Path):
        super().__init__(tensor)
        self.base_dir = Path(base_dir)

    def load(self):
        from onnx import numpy_helper

        return np.array(numpy_helper.to_array(self.tensor, base_dir=str(self.base_dir)))


def graph_weights_dir(graph: gs.Graph) -> Path | None:
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and isinstance(tensor._values, ExternalValues):
            return tensor._values.base_dir
    return graph.__dict__.get("weights_dir")  # gs.Graph.__getattr__ would look up an op function


def spill_constants(graph: gs.Graph, directory: Path | None = None, min_bytes: int | None = None) -> int:
    """Write large in-memory constants (folded, transposed, cast or quantized weights) to the
    weights directory and keep references; returns how many. A no-op for a graph held in memory."""
    directory = directory or graph_weights_dir(graph)
    if directory is None:
        return 0
    min_bytes = max(SPILL_MIN_BYTES if min_bytes is None else min_bytes, _INLINE_BELOW)
    from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter

    _repack_narrow_constants(graph)  # INT4/FP8 values back in onnx's packed form first
    count = 0
    with open(directory / _SPILL_FILE, "ab") as f:
        for tensor in graph.tensors().values():
            if not isinstance(tensor, gs.Constant) or isinstance(tensor._values, ExternalValues):
                continue
            if isinstance(tensor._values, gs.ir.tensor.LazyValues):  # a tensor proto held in memory
                if type(tensor._values) is not gs.ir.tensor.LazyValues or len(tensor._values.tensor.raw_data) < min_bytes:
                    continue
                proto = onnx.TensorProto()
                proto.CopyFrom(tensor._values.tensor)
                proto.name = tensor.name
            elif tensor._values.nbytes >= min_bytes:
                proto = OnnxExporter.export_tensor_proto(tensor)
            else:
                continue
            _move_to_file(proto, f, _SPILL_FILE)
            tensor._values = ExternalValues(proto, directory)
            tensor.data_location = None
            count += 1
    return count


def _move_to_file(tensor: onnx.TensorProto, f, location: str) -> None:
    """Append the tensor's raw bytes to the open file `f` (at `location`) and leave a reference."""
    offset = f.seek(0, os.SEEK_END)
    pad = -offset % _ALIGN
    f.write(b"\0" * pad)
    data = tensor.raw_data
    f.write(data)
    _point_to(tensor, location, offset + pad, len(data))
    tensor.ClearField("raw_data")


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    tensor.data_location = onnx.TensorProto.EXTERNAL


def _is_external(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL


def _all_tensors(model: onnx.ModelProto):
    from onnx.external_data_helper import _get_all_tensors

    return _get_all_tensors(model)


def to_graph(model: onnx.ModelProto) -> gs.Graph:
    graph = _import(model)
    base = weights_dir(model)
    if base is not None:
        for tensor in graph.tensors().values():
            if (isinstance(tensor, gs.Constant) and type(tensor._values) is gs.ir.tensor.LazyValues
                    and _is_external(tensor._values.tensor)):
                tensor._values = ExternalValues(tensor._values.tensor, base)
                # Else values a pass loads or replaces would export marked external, with no file.
                tensor.data_location = None
        graph.weights_dir = base
    return graph


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
    if weights_dir(model) is not None:
        return _save_lazy(model, path, data, external_above)
    if model.ByteSize() >= min(external_above, _PROTOBUF_LIMIT):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        if keep_weights:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(path.parent))
    else:
        onnx.save_model(model, str(path))
    return path


def _save_lazy(model: onnx.ModelProto, path: Path, data: Path, external_above: int) -> Path:
    """Save a lazy model: its weights are copied file to file in chunks (never all in memory), into
    `NAME.data` beside it, or inline when the whole model is below `external_above`. The model then
    refers to the saved copy."""
    source = weights_dir(model)
    tensors = list(_all_tensors(model))
    total = sum(_external_length(t) if _is_external(t) else len(t.raw_data) for t in tensors)
    set_weights_dir(model, None)
    if total + model.ByteSize() < min(external_above, _PROTOBUF_LIMIT):
        from onnx.external_data_helper import load_external_data_for_tensor

        for tensor in tensors:
            if _is_external(tensor):
                load_external_data_for_tensor(tensor, str(source))
        onnx.save_model(model, str(path))
        return path
    from onnx.external_data_helper import load_external_data_for_tensor

    with open(data, "wb") as out:
        for tensor in tensors:
            if _is_external(tensor) and _external_length(tensor) < _INLINE_BELOW:
                # Shape operands: ONNX Runtime's shape inference reads them before external data.
                load_external_data_for_tensor(tensor, str(source))
            elif _is_external(tensor):
                _copy_external(tensor, source, out, data.name)
            elif len(tensor.raw_data) >= _INLINE_BELOW:
                _move_to_file(tensor, out, data.name)
    onnx.save_model(model, str(path))
    set_weights_dir(model, path.resolve().parent)
    return path


def _external_length(tensor: onnx.TensorProto) -> int:
    info = {e.key: e.value for e in tensor.external_data}
    if "length" in info:
        return int(info["length"])
    return int(np.prod(tensor.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def _copy_external(tensor: onnx.TensorProto, source: Path, out, location: str, chunk: int = 64 << 20) -> None:
    info = {e.key: e.value for e in tensor.external_data}
    length = _external_length(tensor)
    offset = out.seek(0, os.SEEK_END)
    pad = -offset % _ALIGN
    out.write(b"\0" * pad)
    with open(source / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        left = length
        while left:
            block = f.read(min(chunk, left))
            if not block:
                raise OSError(f"external data of {tensor.name!r} in {str(source / info['location'])!r} is truncated")
            out.write(block)
            left -= len(block)
    _point_to(tensor, location, offset + pad, length)


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
