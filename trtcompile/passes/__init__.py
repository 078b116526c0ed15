"""Graph rewrites, one per module, each `def name(graph: gs.Graph, ctx: PassContext) -> gs.Graph`.

PIPELINE is the order, written out once. A pass records what it matched and what it declined (and
why) in `ctx.report`; `run_pipeline` times each pass and returns the reports for the manifest.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import onnx_graphsurgeon as gs

from trtcompile.graph.context import ModelInfo, PassContext
from trtcompile.passes.fold_constants import fold_constants
from trtcompile.passes.fold_shapes import fold_shapes
from trtcompile.passes.fuse_attention import fuse_attention
from trtcompile.passes.fuse_gelu import fuse_gelu
from trtcompile.passes.fuse_layer_norm import fuse_layer_norm
from trtcompile.passes.fuse_parallel_matmuls import fuse_parallel_matmuls
from trtcompile.passes.fuse_rms_norm import fuse_rms_norm
from trtcompile.passes.fuse_rotary import fuse_rotary
from trtcompile.passes.group_query_heads import group_query_heads
from trtcompile.passes.simplify_casts import simplify_casts
from trtcompile.passes.split_heads_once import split_heads_once
from trtcompile.graph.report import PassReport

log = logging.getLogger("trtcompile.passes")

Pass = Callable[[gs.Graph, PassContext], gs.Graph]

PIPELINE: list[Pass] = [
    fold_constants,
    fold_shapes,      # legacy exports carry no shapes: infer them, fold the shape arithmetic
    simplify_casts,   # needs fold_shapes' dtypes; legacy exports cast fp32 to fp32
    fuse_layer_norm,  # before RMS norm: a layer norm's inner half looks like one
    fuse_rms_norm,
    fuse_gelu,
    fuse_rotary,      # also repairs the dynamo exporter's batch-1 RotaryEmbedding caches
    fuse_attention,   # after rotary: Q/K then come straight from RotaryEmbedding
    fuse_parallel_matmuls,  # after attention's matching; before precision/quantization, which see Q/K/V as one
    split_heads_once,  # after fuse_parallel_matmuls made the Q/K/V Split: one Reshape/Transpose per layer
    group_query_heads,  # after fuse_attention made the GQA Attention nodes; K/V read once per KV head
]

__all__ = ["PIPELINE", "ModelInfo", "PassContext", "PassReport", "run_pipeline"]


def run_pipeline(graph: gs.Graph, ctx: PassContext, passes: list[Pass] | None = None,
                 on_pass: Callable[[str], None] | None = None) -> tuple[gs.Graph, list[PassReport]]:
    """Run the passes in order (skipping ctx.settings.disabled_passes); return graph and reports."""
    from trtcompile.graph.check import check_graph
    from trtcompile.lazy_weights import spill_constants

    reports = []
    for fn in PIPELINE if passes is None else passes:
        if fn.__name__ in ctx.settings.disabled_passes:
            continue
        if on_pass is not None:
            on_pass(fn.__name__)
        ctx.report = PassReport(fn.__name__, nodes_before=len(graph.nodes))
        start = time.perf_counter()
        graph = fn(graph, ctx)
        graph.cleanup().toposort()
        spill_constants(graph)  # weights a pass made go to disk before the next pass makes more
        ctx.report.seconds = time.perf_counter() - start
        ctx.report.nodes_after = len(graph.nodes)
        if ctx.report.matched or ctx.report.declined:
            log.info("%s: matched %d, declined %d", fn.__name__, len(ctx.report.matched),
                     len(ctx.report.declined))
        if ctx.settings.check_each_pass:
            check_graph(graph, after=fn.__name__)
        reports.append(ctx.report)
    return graph, reports
