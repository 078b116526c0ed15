"""One fusion driver (passes/fusion.py) for the pattern fusions: a match is a dataclass or a
Decline with its reason, and a matcher that trips over an unforeseen graph declines instead of
failing the compile (as fuse_attention always did)."""

from __future__ import annotations

import dataclasses
import importlib

import numpy as np
import onnx_graphsurgeon as gs
import pytest

from fusion_helpers import Builder, apply, assert_same, const, ops
from trtcompile.passes import fusion

# The modules (trtcompile.passes.fuse_gelu is the function: passes/__init__ re-exports it).
GELU = importlib.import_module("trtcompile.passes.fuse_gelu")

SQRT2 = float(np.sqrt(2.0))


def gelu_model():
    #  x ── Div(√2) ── Erf ── Add(1) ─┐
    #  x ─────────────────────────────┴ Mul ── Mul(0.5) ── y
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=["B", 5, 16])
    one_plus = b.op("Add", b.op("Erf", b.op("Div", x, const("s", SQRT2))), const("one", 1.0))
    return b.model([x], [b.op("Mul", b.op("Mul", x, one_plus), const("h", 0.5))])


def test_a_match_is_a_dataclass():
    model = gelu_model()
    graph = gs.import_onnx(model)
    erf = next(n for n in graph.nodes if n.op == "Erf")
    match = GELU._match(graph, erf)
    assert dataclasses.is_dataclass(match) and match.approximate == "none" and len(match.nodes) == 5


def test_an_unforeseen_graph_is_declined_not_a_crash(monkeypatch):
    def broken(graph, node):
        raise IndexError("list index out of range")

    monkeypatch.setattr(GELU, "_match", broken)
    model = gelu_model()
    fused, report = apply(model, GELU.fuse_gelu, prepare=False)
    assert "Gelu" not in ops(fused) and not report.matched
    assert report.declined[0]["reason"] == "internal error (IndexError: list index out of range); please report"
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    assert_same(model, fused, {"x": x})


@pytest.mark.parametrize("name", ["fuse_gelu", "fuse_layer_norm", "fuse_rms_norm", "fuse_rotary"])
def test_the_pattern_fusions_share_the_driver(name, monkeypatch):
    calls = []
    real = fusion.run_fusion

    def counting(*args, **kwargs):
        calls.append(kwargs["opset"])
        return real(*args, **kwargs)

    mod = importlib.import_module(f"trtcompile.passes.{name}")
    monkeypatch.setattr(mod, "run_fusion", counting)
    apply(gelu_model(), getattr(mod, name), prepare=False)
    assert len(calls) == 1
