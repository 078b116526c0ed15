"""What TensorRT's ONNX parser is documented to reject, checked on the graph it would get.

No TensorRT builder can be installed where this project is developed, so a graph TensorRT would
refuse could otherwise go unnoticed until someone builds on a GPU machine. `import_problems` checks
the graph `build/tensorrt_graph.py` hands the parser against the documented rules, without
TensorRT: `compile` records the result in the manifest when it builds no engines (and prints it),
and `build` prints it before parsing and adds it to a parse failure's message. TensorRT's own
parser stays the authority where it runs; these are the rules written down, not all of them.

Sources (the rules, not a copy of the documents):
- ONNX `Attention` import (TensorRT 10.14+, ../shared/tensorrt11.md): no past_key/past_value
  inputs, one output, softcap 0, no softmax_precision, Q/K/V all rank 3 or all rank 4, a mask and
  is_causal not together; `nonpad_kv_seqlen` is not documented as accepted.
- `TensorScatter` onto the KV-cache update layer (10.15+): linear mode; the cache a network input
  whose length along the update axis is static, the updated cache a network output; FP32, FP16 or
  BF16 values.
- onnx-tensorrt's operator matrix (docs/operators.md, 10.x): operators marked unsupported;
  `axes` of Slice/Squeeze/Reduce*/Pad and `axis` of CumSum must be initializers (constants);
  QuantizeLinear/DequantizeLinear zero points must be zero; no custom domains without a plugin.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

# Marked "N" in onnx-tensorrt's operator support matrix (10.x).
UNSUPPORTED = frozenset(
    "AffineGrid Bernoulli BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor BlackmanWindow CenterCropPad "
    "Compress ConcatFromSequence ConvInteger DFT Det DynamicQuantizeLinear HammingWindow HannWindow ImageDecoder "
    "MatMulInteger MaxRoiPool MaxUnpool MelWeightMatrix Multinomial NegativeLogLikelihoodLoss Optional "
    "OptionalGetElement OptionalHasElement QLinearConv QLinearMatMul RegexFullMatch STFT SequenceAt "
    "SequenceConstruct SequenceEmpty SequenceErase SequenceInsert SequenceLength SequenceMap "
    "SoftmaxCrossEntropyLoss SplitToSequence StringConcat StringNormalizer StringSplit TfIdfVectorizer Unique".split())
# Input index of an `axes` (or CumSum's `axis`) that must be a constant.
CONSTANT_AXES = {"Slice": 3, "Squeeze": 1, "Unsqueeze": 1, "Pad": 3, "CumSum": 1,
                 **{op: 1 for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                     "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")}}
ZERO_POINT = {"QuantizeLinear": 2, "DequantizeLinear": 2}
CACHE_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def import_problems(model: onnx.ModelProto, base_dir: str | None = None) -> list[str]:
    """One line per documented rule the graph breaks, naming the node; [] when none does. `base_dir`:
    where the model's external data lives, for the few constants a rule reads (zero points)."""
    graph = model.graph
    constants = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            constants[node.output[0]] = value
    shapes = {v.name: v.type.tensor_type for v in (*graph.input, *graph.output, *graph.value_info)}
    inputs = {v.name: v for v in graph.input if v.name not in constants}
    outputs = {v.name for v in graph.output}
    problems = []
    for node in graph.node:
        problems += _node_problems(node, constants, shapes, inputs, outputs, base_dir)
    return problems


def _rank(shapes: dict, name: str) -> int | None:
    tensor = shapes.get(name)
    return len(tensor.shape.dim) if tensor is not None and tensor.HasField("shape") else None


def _node_problems(node, constants: dict, shapes: dict, inputs: dict, outputs: set,
                   base_dir: str | None = None) -> list[str]:
    where = f"node {node.name or '(unnamed)'!r} ({node.op_type})"
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    given = [i for i in node.input]
    found = []
    if node.domain not in ("", "ai.onnx"):
        return [f"{where}: custom operator of domain {node.domain!r}; TensorRT's parser needs a plugin for it"]
    if node.op_type in UNSUPPORTED:
        found.append(f"{where}: not supported by TensorRT's ONNX parser")
    axes = CONSTANT_AXES.get(node.op_type)
    if axes is not None and len(given) > axes and given[axes] and given[axes] not in constants:
        found.append(f"{where}: its axes input {given[axes]!r} is computed at run time; TensorRT needs a constant")
    zero = ZERO_POINT.get(node.op_type)
    if zero is not None and len(given) > zero and given[zero]:
        tensor = constants.get(given[zero])
        value = _values(tensor, base_dir) if tensor is not None else None
        if tensor is None:
            found.append(f"{where}: its zero point {given[zero]!r} is computed at run time; TensorRT needs a "
                         f"constant zero")
        elif value is not None and np.any(value.astype(np.float64) != 0):
            found.append(f"{where}: a non-zero zero point; TensorRT takes symmetric quantization only")
    if node.op_type == "Attention":
        found += _attention(where, given, attrs, shapes)
        if len([o for o in node.output if o]) > 1:
            found.append(f"{where}: {len([o for o in node.output if o])} outputs; TensorRT takes one output only")
    if node.op_type == "TensorScatter":
        found += _tensor_scatter(where, node, attrs, shapes, inputs, outputs)
    for name, value in attrs.items():  # subgraphs (If, Loop): their own nodes, the outer constants visible
        for sub in value if isinstance(value, list) else [value]:
            if isinstance(sub, onnx.GraphProto):
                inner = {**constants, **{t.name: t for t in sub.initializer}}
                for inner_node in sub.node:
                    found += _node_problems(inner_node, inner, shapes, inputs, outputs, base_dir)
    return found


def _values(tensor, base_dir: str | None) -> np.ndarray | None:
    """A constant's values, read from the model's external data where they are stored there (None
    when they are there and `base_dir` is not given: unknown, so no rule fires on them)."""
    external = tensor.data_location == onnx.TensorProto.EXTERNAL
    if external and base_dir is None:
        return None
    return numpy_helper.to_array(tensor, base_dir=base_dir or "")


def _attention(where: str, given: list[str], attrs: dict, shapes: dict) -> list[str]:
    found = []
    if any(given[4:6]):
        found.append(f"{where}: past_key/past_value inputs; TensorRT takes the whole K/V (the cache outside the node)")
    if len(given) > 6 and given[6]:
        found.append(f"{where}: nonpad_kv_seqlen is not documented as accepted by TensorRT's parser")
    if attrs.get("softcap", 0.0):
        found.append(f"{where}: softcap {attrs['softcap']}; TensorRT takes softcap 0 only")
    if "softmax_precision" in attrs:
        found.append(f"{where}: softmax_precision is set; TensorRT's parser rejects it")
    if len(given) > 3 and given[3] and attrs.get("is_causal", 0):
        found.append(f"{where}: a mask together with is_causal; TensorRT takes one or the other")
    ranks = {_rank(shapes, name) for name in given[:3] if name}
    if None not in ranks and (len(ranks) != 1 or not ranks <= {3, 4}):
        found.append(f"{where}: Q/K/V ranks {sorted(ranks)}; TensorRT takes all rank 3 or all rank 4")
    return found


def _tensor_scatter(where: str, node, attrs: dict, shapes: dict, inputs: dict, outputs: set) -> list[str]:
    found = []
    mode = attrs.get("mode", b"linear")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "linear":
        found.append(f"{where}: mode {mode!r}; TensorRT's KV-cache update layer is linear only")
    cache = node.input[0]
    if cache not in inputs:
        found.append(f"{where}: the cache {cache!r} is not a network input (TensorRT updates a cache input in place)")
    else:
        tensor = inputs[cache].type.tensor_type
        axis = int(attrs.get("axis", -2))
        dims = tensor.shape.dim
        if not dims or not dims[axis].HasField("dim_value"):
            found.append(f"{where}: the cache {cache!r} has no static length along axis {axis}")
        if tensor.elem_type not in CACHE_TYPES:
            found.append(f"{where}: a {onnx.TensorProto.DataType.Name(tensor.elem_type)} cache; TensorRT's KV-cache "
                         f"update takes FLOAT, FLOAT16 or BFLOAT16")
    if node.output[0] not in outputs:
        found.append(f"{where}: the updated cache {node.output[0]!r} is not a network output")
    return found
