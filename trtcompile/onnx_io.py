"""Loading and saving ONNX models, and moving between onnx and onnx-graphsurgeon.

Two pitfalls live here so nothing else has to know them: onnx 1.23 stamps IR version 14, which
ONNX Runtime 1.31 cannot load (polygraphy's folding then silently does nothing), and protobuf
cannot serialize a model over 2 GB without external data.
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
    return gs.import_onnx(model)


def to_model(graph: gs.Graph) -> onnx.ModelProto:
    model = gs.export_onnx(graph)
    return fix_ir_version(model)


def fix_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def opset_of(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def save_model(model: onnx.ModelProto, path: str | Path) -> Path:
    """Save, with weights in one external file beside it when the model is over protobuf's 2 GB."""
    path = Path(path)
    fix_ir_version(model)
    if model.ByteSize() >= _PROTOBUF_LIMIT:
        data = path.name + ".data"
        (path.parent / data).unlink(missing_ok=True)
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data, size_threshold=1024)
    else:
        onnx.save_model(model, str(path))
    return path


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
