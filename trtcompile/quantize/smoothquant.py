"""SmoothQuant: move activation outliers into the weights before calibration.

Decoder activations have a few channels 10-100x larger than the rest; a per-tensor INT8 scale
sized for them crushes every other channel. With per-input-channel factors
s_k = max|X_k|^alpha / max|W_k,:|^(1-alpha), X' = X / s and W' = s * W compute the same product,
and X' is far easier to quantize (Xiao et al., 2023). 1/s is folded into the producer of X when
that is a norm or a Mul by a constant vector whose output only the smoothed MatMuls read:

    LayerNorm(gamma/s, beta/s) ──> X' ──> MatMul(s*W_q), MatMul(s*W_k), MatMul(s*W_v)

otherwise an explicit Mul(1/s) is inserted in front of the MatMuls (TensorRT fuses it into the
producer's kernel).

alpha="auto" picks alpha per activation from AUTO_ALPHAS (or no smoothing) by the relative error
of the group's fake-quantized products X_q @ W_q against X @ W on sample rows of X: the best alpha
differs between a LayerNorm output (0.8-0.9 on MiniLM) and a GELU output (0.95).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.quantize.qdq import Target


AUTO_ALPHAS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)


def smooth(graph: gs.Graph, targets: list[Target], channel_amax: dict[str, np.ndarray], alpha,
           report, samples: dict[str, np.ndarray] | None = None) -> gs.Graph:
    nodes = {n.name: n for n in graph.nodes}
    tensors = graph.tensors()
    groups: dict[str, list[Target]] = {}
    for t in targets:
        if t.weight is not None and t.activations[0] in channel_amax:
            groups.setdefault(t.activations[0], []).append(t)
    for x_name, group in groups.items():
        x = tensors[x_name]
        ax = np.asarray(channel_amax[x_name], np.float64)
        weights = []
        for t in group:
            w = np.asarray(tensors[t.weight].values, np.float64)
            weights.append(w if t.weight_axis == 1 else w.T)  # as [K, N]
        if any(w.shape[0] != ax.shape[0] for w in weights):
            report.note(f"smoothquant: skipped {x_name!r} (channel count differs from its weights)")
            continue
        wmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        chosen = alpha
        if alpha == "auto":
            rows = (samples or {}).get(x_name)
            chosen = _search_alpha(rows, ax, wmax, weights) if rows is not None else 0.85
            if chosen is None:
                report.note(f"smoothquant auto: {x_name!r} left unsmoothed (smoothing does not lower its error)")
                continue
        s = _factors(ax, wmax, chosen)
        for t, w in zip(group, weights):
            scaled = (w * s[:, None]).astype(np.float32)
            const = gs.Constant(f"{t.weight}_smoothed", scaled if t.weight_axis == 1 else scaled.T.copy())
            node = nodes[t.node]
            node.inputs[t.weight_index] = const
        how = _fold_inverse(graph, x, group, nodes, (1.0 / s).astype(np.float32))
        report.note(f"smoothquant alpha={chosen}{' (auto)' if alpha == 'auto' else ''}: {x_name!r} -> {len(group)} MatMul(s), 1/s {how}, "
                    f"max|X| per channel {ax.max() / max(np.median(ax), 1e-12):.1f}x its median")
    return graph.cleanup().toposort()  # callers re-run find_targets: tensor names changed


def _factors(ax: np.ndarray, wmax: np.ndarray, alpha: float) -> np.ndarray:
    s = np.power(np.maximum(ax, 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1.0 - alpha)
    return np.clip(s, 1e-4, 1e4)


def _search_alpha(rows: np.ndarray, ax: np.ndarray, wmax: np.ndarray, weights: list[np.ndarray]):
    """The alpha (or None: no smoothing) whose INT8 products err least on these rows."""
    from trtcompile.quantize.qdq import INT8_MAX, quantize_weight

    x = np.asarray(rows, np.float64)
    exact = [x @ w for w in weights]
    best, best_err = None, np.inf
    for alpha in (None, *AUTO_ALPHAS):
        s = np.ones_like(ax) if alpha is None else _factors(ax, wmax, alpha)
        xs = x / s
        step = max(float(np.abs(xs).max()), 1e-8) / INT8_MAX
        xq = np.clip(np.rint(xs / step), -INT8_MAX - 1, INT8_MAX) * step
        err = 0.0
        for w, y in zip(weights, exact):
            q, scale = quantize_weight((w * s[:, None]).astype(np.float32), 1)
            err += float(((xq @ (q * scale[None, :].astype(np.float64)) - y) ** 2).mean() / max((y ** 2).mean(), 1e-30))
        if err < best_err:
            best, best_err = alpha, err
    return best


def _fold_inverse(graph: gs.Graph, x: gs.Variable, group: list[Target], nodes, inv: np.ndarray,
                  allow_mul: bool = True) -> str | None:
    """Multiply X by `inv` in the op that produces it, or with an explicit Mul in front of the group's
    MatMuls; None (and no change) when it does not fold and `allow_mul` is False."""
    consumers = {c.name for c in x.outputs}
    only_group = consumers <= {t.node for t in group}
    producer = x.inputs[0] if x.inputs else None
    if only_group and producer is not None:
        if producer.op in ("LayerNormalization", "RMSNormalization"):
            ok = all(isinstance(p, gs.Constant) and np.asarray(p.values).shape in ((inv.size,), ())
                     for p in producer.inputs[1:])
            if ok:
                for i in range(1, len(producer.inputs)):
                    vals = np.broadcast_to(np.asarray(producer.inputs[i].values, np.float32), inv.shape)
                    producer.inputs[i] = gs.Constant(f"{producer.inputs[i].name}_{producer.name}_smoothed",
                                                     (vals * inv).astype(np.float32))
                return f"folded into {producer.op} {producer.name!r}"
        if producer.op == "Mul":
            for i, p in enumerate(producer.inputs):
                if isinstance(p, gs.Constant) and np.asarray(p.values).shape in ((inv.size,), ()):
                    vals = np.broadcast_to(np.asarray(p.values, np.float32), inv.shape)
                    producer.inputs[i] = gs.Constant(f"{p.name}_{producer.name}_smoothed",
                                                     (vals * inv).astype(np.float32))
                    return f"folded into Mul {producer.name!r}"
            # SwiGLU: X = act(gate) * up, and up = MatMul(h, W_up) (+ bias): scale W_up's columns.
            for p in producer.inputs:
                linear = _linear_producer(p)
                if linear is not None:
                    _scale_columns(linear, inv)
                    return f"folded into the columns of {linear[0].name!r} (feeding Mul {producer.name!r})"
    if not allow_mul:
        return None
    out = gs.Variable(f"{x.name}_smoothed", dtype=x.dtype, shape=x.shape)
    graph.nodes.append(gs.Node("Mul", f"{x.name}_smooth", inputs=[x, gs.Constant(f"{x.name}_inv_smooth", inv)],
                               outputs=[out]))
    for t in group:
        node = nodes[t.node]
        for i, inp in enumerate(node.inputs):
            if inp is x:
                node.inputs[i] = out
    return "as an explicit Mul"


def _linear_producer(t):
    """(MatMul, bias Add or None, columns) when `t` is only read by one node and is MatMul(h, constant
    W), optionally plus a constant bias, or one output of the Split that fuse_parallel_matmuls puts
    after a joined MatMul: then scaling those columns of W (and the bias) scales `t` alone."""
    if not isinstance(t, gs.Variable) or len(t.outputs) != 1 or not t.inputs:
        return None
    node, add, columns = t.inputs[0], None, None
    if node.op == "Split":
        columns = _split_columns(node, t)
        source = node.inputs[0]
        if columns is None or len(source.outputs) != 1 or not source.inputs:
            return None
        node = source.inputs[0]
    if node.op == "Add":
        const = [i for i in node.inputs if isinstance(i, gs.Constant)]
        var = [i for i in node.inputs if isinstance(i, gs.Variable)]
        if len(const) != 1 or len(var) != 1 or len(var[0].outputs) != 1 or not var[0].inputs:
            return None
        add, node = node, var[0].inputs[0]
    if node.op != "MatMul" or not isinstance(node.inputs[1], gs.Constant) or node.inputs[1].values.ndim != 2:
        return None
    return node, add, columns


def _split_columns(split: gs.Node, t) -> slice | None:
    """The columns of the Split's input that its output `t` holds (a last-axis Split with constant widths)."""
    if len(split.inputs) < 2 or not isinstance(split.inputs[1], gs.Constant):
        return None
    rank = len(split.inputs[0].shape) if split.inputs[0].shape is not None else None
    axis = split.attrs.get("axis", 0)
    if not (axis == -1 or (rank is not None and axis == rank - 1)):
        return None
    widths = [int(w) for w in np.asarray(split.inputs[1].values).reshape(-1)]
    index = split.outputs.index(t)
    start = sum(widths[:index])
    return slice(start, start + widths[index])


def _scale_columns(linear, factors: np.ndarray) -> None:
    matmul, add, columns = linear
    columns = columns or slice(None)
    w = np.array(matmul.inputs[1].values, np.float32)
    w[:, columns] *= factors[None, :]
    matmul.inputs[1] = gs.Constant(f"{matmul.inputs[1].name}_{matmul.name}_colscaled", w)
    if add is not None:
        for i, t in enumerate(add.inputs):
            if isinstance(t, gs.Constant):
                b = np.array(np.broadcast_to(np.asarray(t.values, np.float32), w.shape[-1:]), np.float32)
                b[columns] *= factors
                add.inputs[i] = gs.Constant(f"{t.name}_{add.name}_colscaled", b)
