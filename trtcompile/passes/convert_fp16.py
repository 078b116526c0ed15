"""Mixed precision: weights and activations to FP16 (or BF16), FP32 kept where it matters.

TensorRT 11 is strongly typed: a tensor computes in the precision the ONNX graph gives it, and the
FP16 builder flag is gone. So the compiler writes FP16 into the graph itself: FP16 initializers,
FP16 activations, and Cast nodes at every boundary with what stays FP32.

What stays FP32, and why (each recorded in the pass report as a decline with its reason):
  - ops with no useful FP16 semantics or that carry positions (Range, CumSum, Cos/Sin and the
    angle arithmetic feeding them: rotary angles at position 200 lose ~0.1 rad in FP16);
  - decomposed norm statistics (Pow -> ReduceMean -> Add -> Sqrt): x^2 overflows FP16 at |x| > 256;
    fused LayerNormalization/RMSNormalization keep FP16 I/O with `stash_type=1`, so their
    mean/variance accumulate in FP32 (TensorRT's INormalizationLayer does the same);
  - every node that produces or reads a value whose magnitude exceeds `threshold` (~60000, FP16's
    max is 65504) when the FP32 graph runs on sample data in ONNX Runtime. Values at FP32's
    extremes (|x| >= 1e30, e.g. `finfo(float32).min` attention masks) are sentinels, not overflow:
    their constants are clamped to +-65504 instead;
  - graph inputs and outputs when `keep_io_fp32` (Casts at the boundary).

Attention (opset 23) and Softmax run with FP16 inputs: TensorRT accumulates the softmax in FP32
inside its kernels; `softmax_precision` is not set because TensorRT's parser rejects it.

    x(fp32 input) -> Cast(fp16) -> ... MatMul(fp16 W) ... -> Cast(fp32) -> kept op -> Cast(fp16) ...
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtcompile.graph.context import PassContext
from trtcompile.graph.types import with_types  # noqa: F401 - also used by quantize/ through graph/

FP16_MAX = 65504.0
# Magnitudes above this on sample data mean the value would overflow (or nearly) in FP16.
OVERFLOW_THRESHOLD = 60000.0
# Magnitudes at or above this are mask sentinels (finfo(float32).min and the like), not overflow.
SENTINEL = 1e30

# Ops computed in FP32 whatever the data says.
KEEP_FP32_OPS = {
    "Range": "positions: FP16 cannot count past 2048 exactly",
    "CumSum": "running sums lose precision in FP16",
    "Cos": "rotary/positional angles need FP32",
    "Sin": "rotary/positional angles need FP32",
    "RandomNormal": "random generators", "RandomUniform": "random generators",
    "RandomNormalLike": "random generators", "RandomUniformLike": "random generators",
}
# Inputs that must stay FP32 by the op's schema, whatever the node's precision.
FP32_INPUTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
# Outputs whose type is not the node's float type T (LayerNormalization's Mean/InvStdDev are U).
FIXED_OUTPUTS = {("LayerNormalization", 1), ("LayerNormalization", 2)}
_VARIANCE_CHAIN = {"ReduceMean", "Add", "Sqrt", "Reciprocal"}
_MAX_POSITION_CONE = 24


def convert_fp16(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """Convert to FP16; sample data for the overflow check is generated from the graph's inputs."""
    return convert_float(graph, ctx, np.float16)


def convert_bf16(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    """Convert to BF16 (FP32's exponent range, so no overflow check is needed)."""
    return convert_float(graph, ctx, "bfloat16")


def convert_float(graph: gs.Graph, ctx: PassContext, target, *,
                  sample_feeds: list[dict[str, np.ndarray]] | None = None,
                  threshold: float = OVERFLOW_THRESHOLD) -> gs.Graph:
    """The pass itself: pick the FP32 islands, then retype everything else and cast at the seams."""
    target_np = _dtype(target)
    target_name = "bfloat16" if target_np is _BF16 else "float16"
    graph = with_types(graph)
    keep: dict[str, str] = {}  # node name -> reason it stays FP32

    for node in graph.nodes:
        if node.op in KEEP_FP32_OPS and _has_float_io(node):
            keep.setdefault(node.name, KEEP_FP32_OPS[node.op])
    _keep_position_cones(graph, keep)
    _keep_variance_chains(graph, keep)
    if target_np is np.float16:
        feeds = sample_feeds if sample_feeds is not None else [sample_inputs(graph)]
        try:
            peaks = float_peaks(graph, feeds)
        except Exception as exc:  # noqa: BLE001 - a graph ORT cannot run gets no data-driven check
            ctx.warn(f"convert_fp16: overflow check skipped, ONNX Runtime could not run the FP32 graph: "
                     f"{str(exc).splitlines()[0][:200]}")
            peaks = {}
        by_name = graph.tensors()
        for name, peak in sorted(peaks.items()):
            if peak <= threshold or name not in by_name:
                continue
            tensor = by_name[name]
            why = f"{name!r} reaches {peak:.4g} on sample data (FP16 max 65504)"
            for producer in tensor.inputs:
                keep.setdefault(producer.name, why)
            for consumer in tensor.outputs:
                keep.setdefault(consumer.name, why)

    io_fp32 = ctx.settings.keep_io_fp32
    low: set[str] = set()  # names of float tensors that end up in the target type
    for inp in graph.inputs:
        if _is_f32(inp) and not io_fp32:
            inp.dtype = target_np
            low.add(inp.name)
    converted: Counter = Counter()
    for node in graph.nodes:
        if node.name in keep:
            continue
        converted[node.op] += 1
        for i, out in enumerate(node.outputs):
            if (node.op, i) in FIXED_OUTPUTS:
                continue
            if node.op == "Cast":
                if node.attrs.get("to") == onnx.TensorProto.FLOAT:
                    node.attrs["to"] = _onnx_type(target_np)
                    out.dtype = target_np
                    low.add(out.name)
            elif _is_f32(out):
                out.dtype = target_np
                low.add(out.name)
        value = node.attrs.get("value") if node.op in ("Constant", "ConstantOfShape") else None
        if isinstance(value, gs.Constant) and value.values.dtype == np.float32:
            node.attrs["value"] = gs.Constant(value.name, _to_low(value.values, target_np))
            for out in node.outputs:
                out.dtype = target_np
                low.add(out.name)

    clamped = 0
    casts: dict[tuple[str, str], gs.Variable] = {}
    low_consts: dict[str, gs.Constant] = {}
    for node in list(graph.nodes):
        node_low = node.name not in keep
        for i, tensor in enumerate(node.inputs):
            if isinstance(tensor, gs.Constant):
                if node_low and tensor.values.dtype == np.float32 and (node.op, i) not in FP32_INPUTS:
                    if tensor.name not in low_consts:
                        values = np.asarray(tensor.values)
                        if target_np is np.float16:
                            clamped += int(np.count_nonzero(np.abs(values) > FP16_MAX))
                        low_consts[tensor.name] = gs.Constant(f"{tensor.name}_{target_name}",
                                                              _to_low(values, target_np))
                    node.inputs[i] = low_consts[tensor.name]
                continue
            if not tensor.name or tensor.dtype is None:
                continue
            is_low, is_f32 = tensor.name in low, _is_f32(tensor)
            want_low = node_low and (node.op, i) not in FP32_INPUTS
            if want_low and is_f32:
                node.inputs[i] = _cast(graph, casts, tensor, target_np)
            elif not want_low and is_low:
                node.inputs[i] = _cast(graph, casts, tensor, np.float32)

    for k, out in enumerate(list(graph.outputs)):
        if out.name in low and io_fp32:
            name = out.name
            out.name = f"{name}_{target_name}"
            restored = gs.Variable(name, dtype=np.float32, shape=out.shape)
            graph.nodes.append(gs.Node("Cast", f"{name}_to_float32", {"to": onnx.TensorProto.FLOAT},
                                       inputs=[out], outputs=[restored]))
            graph.outputs[k] = restored

    report = ctx.report
    for node in graph.nodes:
        if node.name in keep:
            report.decline(node.name, keep[node.name], op=node.op)
        elif node.op in ("MatMul", "Gemm", "Attention", "Conv"):
            report.match(node.name, op=node.op, dtype=target_name)
    report.note(f"{target_name}: {sum(converted.values())} nodes converted "
                f"({', '.join(f'{op} {n}' for op, n in converted.most_common(8))}), {len(keep)} kept FP32, "
                f"{len(casts)} casts inserted")
    norms = converted["LayerNormalization"] + converted["RMSNormalization"]
    if norms:
        report.note(f"{norms} fused norms take {target_name} I/O with stash_type=1 (statistics in FP32)")
    if clamped:
        report.note(f"{clamped} constant values beyond +-65504 (mask sentinels) clamped to FP16's range")
    for node in graph.nodes:
        if node.op in ("LayerNormalization", "RMSNormalization") and node.name not in keep:
            node.attrs["stash_type"] = 1
    return graph.cleanup().toposort()


# ---------------------------------------------------------------------------------------------
_BF16 = None
try:  # ml_dtypes comes with onnx; bfloat16 arrays need it
    import ml_dtypes

    _BF16 = np.dtype(ml_dtypes.bfloat16).type
except ImportError:  # pragma: no cover
    pass


def _dtype(target):
    if target in ("bfloat16", "bf16") or (_BF16 is not None and target is _BF16):
        if _BF16 is None:
            raise RuntimeError("bfloat16 needs ml_dtypes")
        return _BF16
    return np.float16


def _onnx_type(target_np) -> int:
    return onnx.TensorProto.BFLOAT16 if target_np is _BF16 else onnx.TensorProto.FLOAT16


def _to_low(values: np.ndarray, target_np) -> np.ndarray:
    values = np.asarray(values, dtype=np.float32)
    if target_np is np.float16:
        values = np.clip(values, -FP16_MAX, FP16_MAX)
    return np.asarray(values.astype(target_np))


def _is_f32(tensor) -> bool:
    return tensor.dtype is not None and np.dtype(tensor.dtype) == np.float32


def _has_float_io(node: gs.Node) -> bool:
    return any(_is_f32(t) for t in list(node.inputs) + list(node.outputs) if not isinstance(t, gs.Constant))


def _cast(graph: gs.Graph, cache: dict, tensor: gs.Variable, to) -> gs.Variable:
    key = (tensor.name, np.dtype(to).name)
    if key not in cache:
        out = gs.Variable(f"{tensor.name}_as_{np.dtype(to).name}", dtype=to, shape=tensor.shape)
        graph.nodes.append(gs.Node("Cast", f"{tensor.name}_cast_{np.dtype(to).name}",
                                   {"to": onnx.TensorProto.FLOAT if to is np.float32 else _onnx_type(to)},
                                   inputs=[tensor], outputs=[out]))
        cache[key] = out
    return cache[key]


def _keep_position_cones(graph: gs.Graph, keep: dict[str, str]) -> None:
    """Cos/Sin and the float arithmetic computing their angles (from integer positions)."""
    for node in graph.nodes:
        if node.op not in ("Cos", "Sin"):
            continue
        cone, frontier = [], [t for t in node.inputs if not isinstance(t, gs.Constant)]
        seen: set[str] = set()
        while frontier and len(cone) <= _MAX_POSITION_CONE:
            tensor = frontier.pop()
            if tensor.name in seen or not tensor.inputs or not _is_f32(tensor):
                continue
            seen.add(tensor.name)
            producer = tensor.inputs[0]
            cone.append(producer)
            if producer.op == "Cast":  # int positions -> float: the cone starts here
                continue
            frontier.extend(t for t in producer.inputs if not isinstance(t, gs.Constant))
        if len(cone) <= _MAX_POSITION_CONE:
            for producer in cone:
                keep.setdefault(producer.name, f"computes the angles of {node.name!r} (positions need FP32)")


def _keep_variance_chains(graph: gs.Graph, keep: dict[str, str]) -> None:
    """Decomposed norms: x^2 and its mean overflow FP16 long before x does."""
    for node in graph.nodes:
        if node.op != "Pow" or not any(c.op in ("ReduceMean", "ReduceSum") for c in node.outputs[0].outputs):
            continue
        keep.setdefault(node.name, "norm statistics (x^2) overflow FP16 above |x| = 256")
        frontier = list(node.outputs[0].outputs)
        while frontier:
            consumer = frontier.pop()
            if consumer.op not in _VARIANCE_CHAIN or consumer.name in keep:
                continue
            keep[consumer.name] = "norm statistics (variance and its root) stay FP32"
            if len(consumer.outputs[0].outputs) == 1:
                frontier.extend(consumer.outputs[0].outputs)


def sample_inputs(graph: gs.Graph, batch: int = 1, sequence: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """Plausible inputs from the graph alone: token ids below the embedding table's size, masks of ones."""
    from trtcompile.runtime.shapes import dim_terms, eval_dim

    rng = np.random.default_rng(seed)
    # One value per named dimension, so inputs sharing a dimension agree, and a sum such as
    # past_sequence+sequence (a KV-cache decoder's mask) is the sum of its terms.
    values: dict[str, int] = {}
    for inp in graph.inputs:
        for axis, dim in enumerate(inp.shape or []):
            if isinstance(dim, str):
                for term in dim_terms(dim):
                    values.setdefault(term, batch if axis == 0 else sequence)
    feeds = {}
    for inp in graph.inputs:
        shape = []
        for axis, dim in enumerate(inp.shape or []):
            if isinstance(dim, int) and dim > 0:
                shape.append(dim)
            elif isinstance(dim, str):
                shape.append(eval_dim(dim, values))
            else:
                shape.append(batch if axis == 0 else sequence)
        dtype = np.dtype(inp.dtype) if inp.dtype is not None else np.dtype(np.float32)
        if np.issubdtype(dtype, np.floating):
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_ or "mask" in inp.name:
            feeds[inp.name] = np.ones(shape, dtype)
        elif "position" in inp.name:
            feeds[inp.name] = np.broadcast_to(np.arange(shape[-1]), shape).astype(dtype)
        else:
            high = 2
            for consumer in inp.outputs:
                if consumer.op == "Gather" and isinstance(consumer.inputs[0], gs.Constant):
                    high = max(high, consumer.inputs[0].shape[0])
            feeds[inp.name] = rng.integers(0, high, shape).astype(dtype)
    return feeds


def float_peaks(graph: gs.Graph, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Max |value| of every FP32 intermediate over the feeds (sentinels >= 1e30 and inf ignored)."""
    from trtcompile.graph.session import ort_session
    from trtcompile.onnx_io import to_model

    model = to_model(graph)
    known = {o.name for o in model.graph.output}
    names = [t.name for t in graph.tensors().values()
             if isinstance(t, gs.Variable) and t.inputs and _is_f32(t) and t.name not in known]
    for name in names:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    names += [o.name for o in graph.outputs if _is_f32(o)]
    session = ort_session(model)
    peaks: dict[str, float] = {}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            a = np.abs(np.asarray(value, dtype=np.float32))
            a = a[np.isfinite(a) & (a < SENTINEL)]
            if a.size:
                peaks[name] = max(peaks.get(name, 0.0), float(a.max()))
    return peaks
