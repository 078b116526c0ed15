"""SmoothQuant: move activation outliers into the weights before calibration.

Decoder activations have a few channels 10-100x larger than the rest; a per-tensor INT8 scale
sized for them crushes every other channel. With per-input-channel factors
s_k = max|X_k|^alpha / max|W_k,:|^(1-alpha), X' = X / s and W' = s * W compute the same product,
and X' is far easier to quantize (Xiao et al., 2023). 1/s is folded into the producer of X when
that is a norm or a Mul by a constant vector whose output only the smoothed MatMuls read:

    LayerNorm(gamma/s, beta/s) ──> X' ──> MatMul(s*W_q), MatMul(s*W_k), MatMul(s*W_v)

otherwise an explicit Mul(1/s) is inserted in front of the MatMuls (TensorRT fuses it into the
producer's kernel).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.quantize.qdq import Target


def smooth(graph: gs.Graph, targets: list[Target], channel_amax: dict[str, np.ndarray], alpha: float,
           report) -> gs.Graph:
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
        s = np.power(np.maximum(ax, 1e-5), alpha) / np.power(np.maximum(wmax, 1e-5), 1.0 - alpha)
        s = np.clip(s, 1e-4, 1e4)
        for t, w in zip(group, weights):
            scaled = (w * s[:, None]).astype(np.float32)
            const = gs.Constant(f"{t.weight}_smoothed", scaled if t.weight_axis == 1 else scaled.T.copy())
            node = nodes[t.node]
            node.inputs[t.weight_index] = const
        how = _fold_inverse(graph, x, group, nodes, (1.0 / s).astype(np.float32))
        report.note(f"smoothquant alpha={alpha}: {x_name!r} -> {len(group)} MatMul(s), 1/s {how}, "
                    f"max|X| per channel {ax.max() / max(np.median(ax), 1e-12):.1f}x its median")
    return graph.cleanup().toposort()  # callers re-run find_targets: tensor names changed


def _fold_inverse(graph: gs.Graph, x: gs.Variable, group: list[Target], nodes, inv: np.ndarray) -> str:
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
    out = gs.Variable(f"{x.name}_smoothed", dtype=x.dtype, shape=x.shape)
    graph.nodes.append(gs.Node("Mul", f"{x.name}_smooth", inputs=[x, gs.Constant(f"{x.name}_inv_smooth", inv)],
                               outputs=[out]))
    for t in group:
        node = nodes[t.node]
        for i, inp in enumerate(node.inputs):
            if inp is x:
                node.inputs[i] = out
    return "as an explicit Mul"
