"""Constant folding and dead-code removal.

The exporters leave shape arithmetic (Shape -> Gather -> Unsqueeze -> Concat -> Reshape chains)
and constant subgraphs behind that every later matcher would otherwise have to see through.
onnx-graphsurgeon folds them with ONNX Runtime; partitioning keeps one unfoldable node from
blocking the rest.

Shared weights are not folded through. A tied embedding is one initializer read by a Gather
(embedding) and by a Transpose -> MatMul (lm_head); folding the Transpose would store a second,
transposed copy of the whole vocabulary matrix (108 MiB for SmolLM2, 640 MiB for a 256k
vocabulary). TensorRT and ONNX Runtime both take the Transpose of an initializer as it is.

    W ──Gather──▶ embeddings          W ──Gather──▶ embeddings
    └──Transpose──▶ Wt ──MatMul        └──Transpose──MatMul      (Wt never stored)
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.graph.context import PassContext

# Smaller shared constants (scales, shape values) fold as usual; copying them costs nothing.
SHARED_WEIGHT_MIN_ELEMENTS = 4096


def fold_constants(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    before = len(graph.nodes)
    kept = fold_keeping_shared_weights(graph)
    ctx.report.note(f"removed {before - len(graph.nodes)} nodes")
    if kept:
        ctx.report.note(f"kept {len(kept)} shared weight(s) unfolded (tied weights stay one initializer): "
                        f"{', '.join(kept)}")
    return graph


def fold_keeping_shared_weights(graph: gs.Graph) -> list[str]:
    """gs's fold_constants, except through shared weights; returns the names of those kept."""
    from trtcompile.lazy_weights import graph_weights_dir, inside_weights_dir

    transpose_weights(graph)
    shielded = _shield_shared_weights(graph)
    try:
        # gs folds in ONNX Runtime sessions on serialized subgraphs: weights on disk resolve from there.
        with inside_weights_dir(graph_weights_dir(graph)):
            graph.fold_constants(partitioning="recursive", error_ok=True).cleanup(remove_unused_graph_inputs=False)
    finally:
        _unshield(graph, shielded)
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return [const.name for const, _ in shielded]


def transpose_weights(graph: gs.Graph) -> int:
    """Fold Transpose(weight) in numpy, one weight at a time.

    The dynamo exporter writes every Linear as MatMul(x, Transpose(W)). gs's folding would
    evaluate them all in one ONNX Runtime session built from the serialized weights: two extra
    copies of the whole model at once. Here each weight is replaced by its transpose in turn.
    """
    from trtcompile.lazy_weights import graph_weights_dir, spill_one

    directory = graph_weights_dir(graph)
    count = 0
    for node in list(graph.nodes):
        if node.op != "Transpose" or len(node.inputs) != 1 or not isinstance(node.inputs[0], gs.Constant):
            continue
        weight = node.inputs[0]
        if len(weight.outputs) != 1 or int(np.prod(weight.shape or [1])) < SHARED_WEIGHT_MIN_ELEMENTS:
            continue  # shared (tied) weights stay as they are; small ones gs folds anyway
        out = node.outputs[0]
        if out in graph.outputs:
            continue
        perm = node.attrs.get("perm") or list(reversed(range(len(weight.shape))))
        folded = gs.Constant(f"{out.name}_folded", np.ascontiguousarray(np.transpose(weight.values, perm)))
        for consumer in list(out.outputs):
            for i, tensor in enumerate(consumer.inputs):
                if tensor is out:
                    consumer.inputs[i] = folded
        node.outputs.clear()
        node.inputs.clear()
        if directory is not None:  # one weight at a time in memory, not all of them
            spill_one(folded, directory)
        count += 1
    return count


def shared_weights(graph: gs.Graph) -> list[gs.Constant]:
    """Large initializers read by more than one node (tied embeddings and the like)."""
    return [t for t in graph.tensors().values()
            if isinstance(t, gs.Constant) and len(t.outputs) > 1
            and int(np.prod(t.shape or [1])) >= SHARED_WEIGHT_MIN_ELEMENTS]


def _shield_shared_weights(graph: gs.Graph) -> list[tuple[gs.Constant, gs.Variable]]:
    """Stand a graph input in for each shared weight, so nothing that reads it is foldable."""
    shielded = []
    for const in shared_weights(graph):
        stand_in = gs.Variable(f"{const.name}__shared_weight", dtype=const.dtype, shape=list(const.shape))
        _replace_input(const, stand_in)
        graph.inputs.append(stand_in)
        shielded.append((const, stand_in))
    return shielded


def _unshield(graph: gs.Graph, shielded: list[tuple[gs.Constant, gs.Variable]]) -> None:
    for const, stand_in in shielded:
        _replace_input(stand_in, const)
        graph.inputs.remove(stand_in)


def _replace_input(old: gs.Tensor, new: gs.Tensor) -> None:
    for node in list(old.outputs):
        for i, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[i] = new  # item assignment keeps gs's producer/consumer links in sync
