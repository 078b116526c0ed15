"""Lazy models: a compile's weights stay on disk between export and package.

Export writes the weights as external data into a work directory; the in-memory model holds only
references, and its metadata entry WEIGHTS_DIR_KEY says where they are. After `to_graph`, a pass
reads a weight only when it needs its values (ExternalValues); what a pass creates (transposed,
cast, quantized weights) is written back out by `spill_constants` before the next pass runs; ONNX
Runtime sessions on such a model resolve the files from inside the directory; saving copies the
weights file to file, in chunks. So no stage holds the whole model twice, and none but the
verifying ONNX Runtime session holds it once.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs


def load_lazy(path: str | Path) -> onnx.ModelProto:
    """The model without its external weights, which stay in their files until a pass reads them."""
    from trtcompile.onnx_io import load_model

    model = load_model(path, load_weights=False)
    if any(_is_external(t) for t in _all_tensors(model)):
        set_weights_dir(model, Path(path).resolve().parent)
    return model


# Metadata entry of a lazy model: the directory its external data locations are relative to.
WEIGHTS_DIR_KEY = "trtcompile.weights_dir"
# Constants a pass creates above this size go to the weights directory after the pass.
SPILL_MIN_BYTES = 1 << 20
_SPILL_FILE = "spilled.data"
_ALIGN = 4096  # ONNX Runtime maps external data at page-aligned offsets instead of copying it
_INLINE_BELOW = 1024  # bytes; smaller tensors stay in the protobuf (onnx's own default threshold)


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

    from trtcompile.onnx_io import _repack_narrow_constants

    _repack_narrow_constants(graph)  # INT4/FP8 values back in onnx's packed form first
    count = 0
    with open(directory / _SPILL_FILE, "ab") as f:
        for tensor in graph.tensors().values():
            if not isinstance(tensor, gs.Constant) or isinstance(tensor._values, ExternalValues):
                continue
            if isinstance(tensor._values, gs.ir.tensor.LazyValues):  # a tensor proto held in memory
                if (type(tensor._values) is not gs.ir.tensor.LazyValues
                        or len(tensor._values.tensor.raw_data) < min_bytes):
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


def spill_one(constant: gs.Constant, directory: Path) -> None:
    """Write one new constant to the weights directory now (a pass making many keeps one in memory)."""
    spill_constants(gs.Graph(nodes=[], outputs=[constant]), directory)


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


def attach_weights(graph: gs.Graph, model: onnx.ModelProto) -> gs.Graph:
    """Let the constants of a graph imported from a lazy model read their values from its files."""
    base = weights_dir(model)
    if base is None:
        return graph
    for tensor in graph.tensors().values():
        if (isinstance(tensor, gs.Constant) and type(tensor._values) is gs.ir.tensor.LazyValues
                and _is_external(tensor._values.tensor)):
            tensor._values = ExternalValues(tensor._values.tensor, base)
            # Else values a pass loads or replaces would export marked external, with no file.
            tensor.data_location = None
    graph.weights_dir = base  # where spill_constants writes, even once no constant is external
    return graph


def save_lazy(model: onnx.ModelProto, path: Path, data: Path, external_above: int) -> Path:
    """Save a lazy model: its weights are copied file to file in chunks (never all in memory), into
    `NAME.data` beside it, or inline when the whole model is below `external_above`. The model then
    refers to the saved copy."""
    source = weights_dir(model)
    tensors = list(_all_tensors(model))
    total = sum(_external_length(t) if _is_external(t) else len(t.raw_data) for t in tensors)
    set_weights_dir(model, None)
    from onnx.external_data_helper import load_external_data_for_tensor

    if total + model.ByteSize() < external_above:
        for tensor in tensors:
            if _is_external(tensor):
                load_external_data_for_tensor(tensor, str(source))
        onnx.save_model(model, str(path))
        return path
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
