"""Constant folding and dead-code removal.

The exporters leave shape arithmetic (Shape -> Gather -> Unsqueeze -> Concat -> Reshape chains)
and constant subgraphs behind that every later matcher would otherwise have to see through.
onnx-graphsurgeon folds them with ONNX Runtime; partitioning keeps one unfoldable node from
blocking the rest.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from trtcompile.graph.context import PassContext


def fold_constants(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    before = len(graph.nodes)
    graph.fold_constants(partitioning="recursive", error_ok=True).cleanup(remove_unused_graph_inputs=False).toposort()
    ctx.report.note(f"removed {before - len(graph.nodes)} nodes")
    return graph
