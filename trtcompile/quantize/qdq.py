"""Where Q/DQ pairs go, and writing them, per TensorRT's explicit-quantization rules.

TensorRT fuses a DequantizeLinear into the MatMul/Gemm it feeds directly, and the preceding
QuantizeLinear into whatever produced the activation. So, for each MatMul/Gemm with a constant
weight:

    X ──Q(scale_x, 0)──DQ──┐                    per-tensor activation scale (calibrated)
                           MatMul/Gemm ── Y      (Y stays float: residual adds, norms, softmax
    W_int8 ─────────DQ(s_w, axis)──┘              are left alone, nothing splits a fusion)

weights are stored as int8 initializers with per-output-channel symmetric scales (axis=1 for a
[K, N] MatMul weight, axis=0 for Gemm transB=1). An activation read by several quantized MatMuls
(Q, K and V read the same LayerNorm output) gets one shared Q/DQ pair. Activation x activation
MatMuls (unfused attention's Q@K^T and P@V) get per-tensor Q/DQ on both inputs only with
`int8_attention`; fused `Attention` nodes are left in float (TensorRT's IAttention takes
FP32/FP16/BF16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

INT8_MAX = 127
FP8_E4M3_MAX = 448.0


@dataclass(frozen=True)
class QFormat:
    """The quantized type of a Q/DQ pair: INT8 (int8, |q| <= 127) or FP8 (E4M3, |q| <= 448).

    TensorRT takes both as explicit Q/DQ on MatMul/Gemm inputs, symmetric (zero point 0), weights
    per output channel and activations per tensor; FP8 needs Ada/Hopper or later."""

    name: str
    qmax: float

    @property
    def dtype(self):
        if self.name == "int8":
            return np.dtype(np.int8)
        import ml_dtypes

        return np.dtype(ml_dtypes.float8_e4m3fn)

    def cast(self, scaled: np.ndarray) -> np.ndarray:
        """Values already divided by their scale, rounded and saturated into this type."""
        clipped = np.clip(scaled, -self.qmax, self.qmax)
        if self.name == "int8":
            return np.rint(clipped).astype(np.int8)
        return clipped.astype(self.dtype)  # round-to-nearest-even, as QuantizeLinear's saturate=1


INT8 = QFormat("int8", float(INT8_MAX))
FP8 = QFormat("fp8", FP8_E4M3_MAX)


@dataclass(frozen=True)
class Target:
    """One MatMul/Gemm to quantize: its activation input(s) and its weight (if constant)."""

    node: str
    op: str
    activations: tuple[str, ...]  # tensor names quantized per-tensor
    weight: str | None  # constant initializer name, quantized per-channel
    weight_axis: int | None  # output-channel axis of the weight
    weight_index: int | None  # which input of the node is the weight


def find_targets(graph: gs.Graph, report=None, int8_attention: bool = False,
                 keep_float: dict[str, str] | None = None) -> list[Target]:
    """Every MatMul/Gemm TensorRT can run in INT8; declines (with reasons) go to `report`.
    `keep_float` names nodes to leave alone, with the reason to report."""
    targets = []
    keep_float = keep_float or {}
    for node in graph.nodes:
        if node.op == "Attention" and int8_attention and report is not None:
            report.decline(node.name, "fused Attention stays float: TensorRT's IAttention takes "
                                      "FP32/FP16/BF16 Q/K/V (INT8 attention needs the unfused MatMul/Softmax form)",
                           op=node.op)
        if node.op not in ("MatMul", "Gemm"):
            continue
        a, b = node.inputs[0], node.inputs[1]

        def decline(reason):
            if report is not None:
                report.decline(node.name, reason, op=node.op)

        if node.name in keep_float:
            decline(keep_float[node.name])
            continue

        if _float_var(a) and isinstance(b, gs.Constant):
            w = np.asarray(b.values)
            if w.dtype != np.float32 or w.ndim != 2:
                decline(f"weight {b.name!r} is {w.dtype} with rank {w.ndim}; per-channel INT8 needs a 2-D FP32 weight")
                continue
            if node.op == "Gemm" and node.attrs.get("transA", 0):
                decline("Gemm with transA=1")
                continue
            axis = 0 if node.op == "Gemm" and node.attrs.get("transB", 0) else 1
            targets.append(Target(node.name, node.op, (a.name,), b.name, axis, 1))
        elif _float_var(a) and _float_var(b):
            if not int8_attention:
                decline("activation x activation MatMul (attention BMM): kept float; enable int8_attention")
                continue
            targets.append(Target(node.name, node.op, (a.name, b.name), None, None, None))
        else:
            decline("weight is not a constant initializer (fold constants first) or inputs are not FP32")
    return targets


# Ops between the LM head's MatMul and the logits output that change no values.
_PASSTHROUGH = {"Reshape", "Cast", "Identity", "Squeeze", "Unsqueeze", "Slice", "Gather", "Transpose", "Flatten"}


def lm_head(graph: gs.Graph, language_model: bool = True) -> str | None:
    """The MatMul whose output reaches the logits output (or a language model's first output, if
    none is named so) through reshapes/casts (and a bias Add) only: a language model's head, which
    INT4 and FP8 may keep float. None for a model that is no language model and has no logits."""
    outputs = [o for o in graph.outputs if "logit" in o.name] or (graph.outputs[:1] if language_model else [])
    for out in outputs:
        tensor, hops = out, 0
        while tensor.inputs and hops < 8:
            producer = tensor.inputs[0]
            if producer.op == "MatMul":
                return producer.name
            if producer.op not in _PASSTHROUGH and producer.op != "Add":
                break
            tensor, hops = producer.inputs[0], hops + 1
    return None


def _float_var(t) -> bool:
    return isinstance(t, gs.Variable) and (t.dtype is None or np.dtype(t.dtype) == np.float32)


def quantize_weight(w: np.ndarray, axis: int, fmt: QFormat = INT8) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel: (w_q, scale) with w ~= w_q * scale along `axis` (int8 or fp8 e4m3)."""
    reduce = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce)
    scale = np.where(amax > 0, amax / fmt.qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = fmt.cast(w / scale.reshape(shape))
    return q, scale


def insert_qdq(graph: gs.Graph, targets: list[Target], amax: dict[str, float], fmt: QFormat = INT8,
               rounded: dict[str, tuple[np.ndarray, np.ndarray]] | None = None) -> gs.Graph:
    """Write Q/DQ for `targets` with activation ranges `amax` (tensor name -> max |x|). `rounded`
    gives weights already quantized (GPTQ): weight name -> (values in `fmt`, per-channel scale)."""
    nodes = {n.name: n for n in graph.nodes}
    tensors = graph.tensors()
    act_dq: dict[str, gs.Variable] = {}
    weight_dq: dict[tuple[str, int], gs.Variable] = {}
    for target in targets:
        node = nodes[target.node]
        for name in target.activations:
            if name not in act_dq:
                act_dq[name] = _activation_qdq(graph, tensors[name], amax[name], fmt)
            for i, t in enumerate(node.inputs):
                if t.name == name:
                    node.inputs[i] = act_dq[name]
        if target.weight is not None:
            key = (target.weight, target.weight_axis)
            if key not in weight_dq:
                weight_dq[key] = _weight_dq(graph, tensors[target.weight], target.weight_axis, fmt,
                                            (rounded or {}).get(target.weight))
            node.inputs[target.weight_index] = weight_dq[key]
    return graph.cleanup().toposort()


def activation_scale(amax: float, fmt: QFormat = INT8) -> float:
    return float(max(amax, 1e-8) / fmt.qmax)


def _activation_qdq(graph: gs.Graph, x: gs.Variable, amax: float, fmt: QFormat = INT8) -> gs.Variable:
    scale = gs.Constant(f"{x.name}_scale", np.array(activation_scale(amax, fmt), dtype=np.float32))
    zero = _constant(f"{x.name}_zero_point", np.zeros((), fmt.dtype))
    q = gs.Variable(f"{x.name}_quantized", dtype=fmt.dtype, shape=x.shape)
    dq = gs.Variable(f"{x.name}_dequantized", dtype=np.float32, shape=x.shape)
    graph.nodes.append(gs.Node("QuantizeLinear", f"{x.name}_QuantizeLinear", inputs=[x, scale, zero], outputs=[q]))
    graph.nodes.append(gs.Node("DequantizeLinear", f"{x.name}_DequantizeLinear", inputs=[q, scale, zero], outputs=[dq]))
    return dq


def _weight_dq(graph: gs.Graph, w: gs.Constant, axis: int, fmt: QFormat = INT8, rounded=None) -> gs.Variable:
    q, scale = rounded if rounded is not None else quantize_weight(np.asarray(w.values, np.float32), axis, fmt)
    qc = _constant(f"{w.name}_{fmt.name}", q)
    sc = gs.Constant(f"{w.name}_scale", scale)
    zero = _constant(f"{w.name}_zero_point", np.zeros(scale.shape, fmt.dtype))
    out = gs.Variable(f"{w.name}_dequantized", dtype=np.float32, shape=list(q.shape))
    graph.nodes.append(gs.Node("DequantizeLinear", f"{w.name}_DequantizeLinear", {"axis": axis},
                               inputs=[qc, sc, zero], outputs=[out]))
    return out


def _constant(name: str, values: np.ndarray) -> gs.Constant:
    if values.dtype == np.int8:
        return gs.Constant(name, values)
    from trtcompile.quantize.blocks import packed_constant

    return packed_constant(name, values)  # float8: onnx-graphsurgeon has no numpy type for it


def check_placement(graph: gs.Graph, node_names: list[str], fmt: QFormat = INT8) -> list[str]:
    """Problems with the Q/DQ of the named MatMul/Gemm nodes (empty = placed as TensorRT wants).

    Each float input must come straight from a DequantizeLinear whose input is a QuantizeLinear
    (activations) or an int8 constant (weights, with a per-channel scale and axis on the output
    channel)."""
    problems = []
    nodes = {n.name: n for n in graph.nodes}
    for name in node_names:
        node = nodes.get(name)
        if node is None:
            problems.append(f"{name}: not in the graph")
            continue
        for i, t in enumerate(node.inputs[:2]):
            producer = t.inputs[0] if isinstance(t, gs.Variable) and t.inputs else None
            if producer is None or producer.op != "DequantizeLinear":
                problems.append(f"{name} input {i} ({t.name}) is not fed by a DequantizeLinear")
                continue
            src = producer.inputs[0]
            zp = producer.inputs[2] if len(producer.inputs) > 2 else None
            if zp is not None and isinstance(zp, gs.Constant) and np.any(np.asarray(zp.values).astype(np.float32) != 0):
                problems.append(f"{name} input {i}: zero point is not 0 (TensorRT wants symmetric)")
            if isinstance(src, gs.Constant):
                if np.asarray(src.values).dtype != fmt.dtype:
                    problems.append(f"{name} input {i}: weight is {np.asarray(src.values).dtype}, not {fmt.dtype}")
                scale = np.asarray(producer.inputs[1].values)
                axis = producer.attrs.get("axis", 1)
                out_axis = 0 if node.op == "Gemm" and node.attrs.get("transB", 0) else 1
                if scale.ndim != 1 or scale.shape[0] != src.shape[out_axis] or axis != out_axis:
                    problems.append(f"{name} input {i}: weight scale is not per output channel")
            else:
                q = src.inputs[0] if src.inputs else None
                if q is None or q.op != "QuantizeLinear":
                    problems.append(f"{name} input {i}: DequantizeLinear is not fed by a QuantizeLinear")
                elif np.asarray(q.inputs[1].values).size != 1:
                    problems.append(f"{name} input {i}: activation scale is not per-tensor")
    return problems


def materialize_transposed_weights(graph: gs.Graph, skip=()) -> list[str]:
    """MatMul/Gemm weights read as Transpose(constant) -- a tied LM head reads the embedding that
    way, so the embedding stays one initializer -- become constants of their own, so the weight
    can be quantized (the embedding's Gather keeps the float original). Nodes in `skip` (a head
    that stays float) keep reading the shared one. Returns the node names."""
    done = []
    for node in graph.nodes:
        if node.op not in ("MatMul", "Gemm") or len(node.inputs) < 2 or node.name in skip:
            continue
        w = node.inputs[1]
        if not (isinstance(w, gs.Variable) and len(w.inputs) == 1 and w.inputs[0].op == "Transpose"):
            continue
        transpose = w.inputs[0]
        source = transpose.inputs[0]
        perm = transpose.attrs.get("perm")
        if isinstance(source, gs.Constant) and source.values.ndim == 2 and (perm is None or list(perm) == [1, 0]):
            node.inputs[1] = gs.Constant(f"{node.name}_weight", np.ascontiguousarray(np.asarray(source.values).T))
            done.append(node.name)
    if done:
        graph.cleanup()
    return done
