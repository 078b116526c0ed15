"""Raise a graph's default-domain opset so a fusion can emit a newer op.

The fused ops are young: LayerNormalization (17), Gelu (20), RMSNormalization and RotaryEmbedding
(23). A model exported at a lower opset (the legacy exporter caps at 20) must have its opset
import raised before such a node is valid. Raising it is not just a number: ops whose signature
changed on the way must be rewritten too. From 13 to 23 the only breaking change is opset 18
moving `axes` of the Reduce* ops from an attribute to an input; below 13 we hand the model to
ONNX's version converter (slow, rare).
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

# Reduce ops whose `axes` became an input at opset 18 (ReduceSum moved at 13 already).
_REDUCE_AXES_INPUT_AT_18 = ("ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                            "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")


def default_opset(graph: gs.Graph) -> int:
    return int(graph.opset or 0)


def ensure_opset(graph: gs.Graph, version: int) -> gs.Graph:
    """Return a graph whose default-domain opset is at least `version`, meaning unchanged.

    May return a new Graph object (below opset 13); callers must use the returned graph and
    re-find their matches after it.
    """
    current = default_opset(graph)
    if current >= version:
        return graph
    if current < 13:
        import onnx.version_converter

        from trtcompile.lazy_weights import set_weights_dir, weights_dir
        from trtcompile.onnx_io import to_graph, to_model

        model = to_model(graph)
        converted = onnx.version_converter.convert_version(model, version)
        set_weights_dir(converted, weights_dir(model))
        return to_graph(converted)
    if current < 18 <= version:
        for node in graph.nodes:
            if node.op in _REDUCE_AXES_INPUT_AT_18 and "axes" in node.attrs:
                axes = np.asarray(node.attrs.pop("axes"), dtype=np.int64)
                node.inputs.append(gs.Constant(f"{node.name or node.outputs[0].name}_axes", axes))
    graph.opset = version
    _set_import(graph, version)
    return graph


def _set_import(graph: gs.Graph, version: int) -> None:
    # gs writes graph.opset as the default-domain import; keep an explicit entry in sync if present.
    # The entries may be shared with the ModelProto the graph was imported from: replace, never mutate.
    imports = getattr(graph, "import_domains", None)
    if not imports:
        return
    from onnx.helper import make_opsetid

    graph.import_domains = [make_opsetid(e.domain, version if e.domain in ("", "ai.onnx") else e.version)
                            for e in imports]


def raise_for_matches(graph: gs.Graph, version: int, found: list, rematch, ctx) -> tuple[gs.Graph, list]:
    """Raise the opset when at least one candidate matched (a match is anything but a reason str).

    `rematch(graph)` re-finds the candidates; it is called only when raising built a new Graph.
    """
    if default_opset(graph) >= version or all(isinstance(f, str) for _, f in found):
        return graph, found
    before = default_opset(graph)
    raised = ensure_opset(graph, version)
    ctx.report.note(f"raised the default opset from {before} to {version}")
    if raised is graph:
        return graph, found
    return raised, rematch(raised)
