"""The one fusion driver and its match convention, as ONNX Runtime's `Fusion.apply` has it.

A fusion is its pattern and its rewrite, nothing else:

    candidates(graph) -> [anchor nodes]          cheap pre-filter (e.g. every ReduceMean)
    match(graph, anchor) -> a Match dataclass    or raise Decline("why not"), at any depth
    rewrite(graph, anchor, match) -> (name, detail)   add the fused node; detail goes to the report

`run_fusion` finds every match first, raises the opset when at least one matched (re-matching if
that built a new graph), unhooks each match's nodes, rewrites, and reports every match and every
decline with its reason (a fusion that silently matches nothing is a bug). A matcher that trips
over a graph it did not foresee declines with "internal error" instead of failing the compile.
`fuse_attention` matches with the same convention but rewrites as it goes (one attention block's
rewrite changes what the next sees: shared masks and K/V), so it loops itself over `attempt`.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

import onnx_graphsurgeon as gs

from trtcompile.graph.context import PassContext
from trtcompile.passes._opset import raise_for_matches

log = logging.getLogger("trtcompile.passes")


class Decline(Exception):
    """A candidate that is not (safely) this pattern; the message is the reason for the report."""


class Match(Protocol):
    nodes: list[gs.Node]  # the matched subgraph's nodes, removed by the driver
    output: gs.Tensor  # the tensor the fused node produces in their place


def attempt(match: Callable, graph: gs.Graph, anchor: gs.Node, fusion: str):
    """match(graph, anchor), or the reason it declined (a str): the one place a Decline is caught."""
    try:
        return match(graph, anchor)
    except Decline as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a graph this matcher did not foresee: leave it, say so
        log.warning("%s: %s: %s: %s", fusion, anchor.name, type(exc).__name__, exc)
        return f"internal error ({type(exc).__name__}: {exc}); please report"


def run_fusion(graph: gs.Graph, ctx: PassContext, *, opset: int,
               candidates: Callable[[gs.Graph], list[gs.Node]],
               match: Callable[[gs.Graph, gs.Node], Match],
               rewrite: Callable[[gs.Graph, gs.Node, Match], tuple[str, dict]],
               reported: Callable[[gs.Node], bool] = lambda anchor: True,
               before_rewrite: Callable[[gs.Graph], None] | None = None) -> gs.Graph:
    """Match every candidate, then rewrite each match; see the module docstring.

    reported(anchor): whether a decline of this anchor is worth a line in the report (a candidate
    filter that is broader than the pattern, e.g. every Neg for rotary, would flood it).
    before_rewrite(graph): a hook run once after matching (e.g. a repair the rewrites rely on).
    """
    name = ctx.report.name

    def find(g: gs.Graph) -> list:
        return [(anchor, attempt(match, g, anchor, name)) for anchor in candidates(g)]

    graph, found = raise_for_matches(graph, opset, find(graph), find, ctx)
    if before_rewrite is not None:
        before_rewrite(graph)
    for anchor, result in found:
        if isinstance(result, str):
            if reported(anchor):
                ctx.report.decline(anchor.name, result)
            continue
        for node in result.nodes:
            node.outputs.clear()
        fused, detail = rewrite(graph, anchor, result)
        ctx.report.match(fused, removed=len(result.nodes), **detail)
    matched = len(ctx.report.matched)
    if matched:
        log.info("%s: matched %d", name, matched)
    return graph.cleanup(remove_unused_graph_inputs=False).toposort()
