"""Structural check of a graph between rewrites: what a bad pass breaks first.

Names unique, nodes in topological order, no dangling tensors, and ONNX's own checker with
strict shape/type inference (which catches dtype disagreements).
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs


class GraphCheckError(AssertionError):
    """A pass produced a malformed graph: a bug in the pass, never the user's fault."""


def check_graph(graph: gs.Graph, after: str = "") -> None:
    where = f" after {after}" if after else ""
    problems = []

    node_names = [n.name for n in graph.nodes if n.name]
    dupes = {n for n in node_names if node_names.count(n) > 1}
    if dupes:
        problems.append(f"duplicate node names {sorted(dupes)[:5]}")

    produced: dict[str, str] = {}
    available = {t.name for t in graph.inputs}
    available |= {t.name for t in graph.tensors().values() if isinstance(t, gs.Constant)}
    for node in graph.nodes:
        for t in node.inputs:
            if t.name and not isinstance(t, gs.Constant) and t.name not in available:
                producer = t.inputs[0].name if t.inputs else None
                problems.append(
                    f"node {node.name!r} reads {t.name!r} "
                    + ("before it is produced (not topological)" if producer else "which nothing produces")
                )
        for t in node.outputs:
            if t.name in produced:
                problems.append(f"tensor {t.name!r} produced by {produced[t.name]!r} and {node.name!r}")
            produced[t.name] = node.name
            available.add(t.name)
    for t in graph.outputs:
        if t.name not in available:
            problems.append(f"graph output {t.name!r} is not produced")

    if not problems:
        model = gs.export_onnx(graph)
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as exc:  # checker raises several types; all mean a malformed graph
            problems.append(f"onnx checker: {str(exc).splitlines()[0]}")
    if problems:
        raise GraphCheckError(f"malformed graph{where}:\n  " + "\n  ".join(problems[:20]))
