"""The gate's switchable session: one ONNX Runtime session whose mask picks which MatMuls run
quantized. Reference: the graph built with only that subset quantized (insert_qdq), run on its
own; the outputs must be the same numbers (Where selects tensors, nothing is blended)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import ort_run
from tiny_onnx import export, token_feeds

from trtcompile.graph.report import PassReport
from trtcompile.onnx_io import to_graph, to_model
from trtcompile.quantize.calibrate import collect
from trtcompile.quantize.int8 import prepared_graph
from trtcompile.quantize.qdq import FP8, INT8, find_targets, insert_qdq
from trtcompile.settings import CalibrationSettings


@pytest.mark.parametrize("fmt", [INT8, FP8])
def test_switchable_session_matches_each_subset_built_alone(fmt):
    from trtcompile.quantize.switchable import SwitchableSession

    model = export("llama")
    cal, ev = token_feeds(2, 1, 16, seed=1), token_feeds(1, 1, 16, seed=2)
    graph = prepared_graph(model, cal, None, CalibrationSettings(), PassReport("t"))
    targets = find_targets(graph)
    fp32 = to_model(graph)
    stats = collect(fp32, sorted({a for t in targets for a in t.activations}), cal)
    amax = {n: s["hist"].amax for n, s in stats.items()}
    session = SwitchableSession(to_graph(fp32), targets, amax, fmt)
    rng = np.random.default_rng(0)
    for subset in (targets, [], [t for t in targets if rng.random() < 0.5]):
        alone = to_model(insert_qdq(to_graph(fp32), subset, amax, fmt))
        names = [o.name for o in session.get_outputs()]
        got = session.select(subset).run(names, ev[0])
        want = ort_run(alone, ev[0])
        for name, value in zip(names, got):
            np.testing.assert_array_equal(value, want[name])
