"""SmoothQuant alone is an identity in FP32: X/s and s*W give the same outputs, folded or not."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from helpers import ort_run
from tiny_onnx import export, token_feeds

from trtcompile.passes.convert_fp16 import with_types
from trtcompile.graph.report import PassReport
from trtcompile.quantize.calibrate import collect
from trtcompile.quantize.qdq import find_targets
from trtcompile.quantize.smoothquant import smooth


@pytest.mark.parametrize("family,batch,folded", [("llama", 1, "folded into"), ("bert", 2, "explicit Mul")])
def test_smoothing_keeps_the_function(family, batch, folded):
    model = export(family)
    feeds = token_feeds(2, batch, 12, seed=5)
    graph = with_types(gs.import_onnx(model))
    targets = find_targets(graph)
    acts = sorted({t.activations[0] for t in targets})
    stats = collect(model, acts, feeds, per_channel=True)
    report = PassReport("t")
    smoothed = smooth(graph, targets, {n: s["channel_amax"] for n, s in stats.items()}, 0.8, report)
    out = gs.export_onnx(smoothed)
    out.ir_version = 10
    for feed in feeds:
        ref = next(iter(ort_run(model, feed).values()))
        got = next(iter(ort_run(out, feed).values()))
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
    assert any(folded in n for n in report.notes), report.notes
    # Shared norm weights (the exporter dedups identical initializers) are copied, never edited in place.
    assert len(report.notes) == len({t.activations[0] for t in targets})
