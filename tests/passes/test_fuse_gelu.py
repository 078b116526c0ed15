import numpy as np
import onnx_graphsurgeon as gs
import pytest

from pass_fixtures import tiny_feeds
from fusion_helpers import Builder, apply, assert_same, const, ops
from trtcompile.passes.fuse_gelu import fuse_gelu

SQRT2 = float(np.sqrt(2.0))


def _x():
    return gs.Variable("x", dtype=np.float32, shape=["B", 5, 16])


def _feeds(batch=3):
    return {"x": np.random.default_rng(0).standard_normal((batch, 5, 16)).astype(np.float32) * 3}


@pytest.mark.parametrize("order", ["legacy", "dynamo", "half_first"])
def test_erf_form_fuses_in_every_association(order):
    #  x ── Div(√2) ── Erf ── Add(1) ─┐
    #  x ─────────────────────────────┴ Mul ── Mul(0.5) ── y      (legacy)
    #                  ... Add(1) ── Mul(0.5) ── Mul(x) ── y      (dynamo)
    #  x ── Mul(0.5) ──────────────── Mul(·, 1+erf) ── y          (half_first)
    b, x = Builder(), _x()
    one_plus = b.op("Add", b.op("Erf", b.op("Div", x, const("s", SQRT2))), const("one", 1.0))
    if order == "legacy":
        y = b.op("Mul", b.op("Mul", x, one_plus), const("h", 0.5))
    elif order == "dynamo":
        y = b.op("Mul", x, b.op("Mul", const("h", 0.5), one_plus))
    else:
        y = b.op("Mul", b.op("Mul", x, const("h", 0.5)), one_plus)
    model = b.model([x], [y])
    fused, report = apply(model, fuse_gelu, prepare=False)
    assert ops(fused) == {"Gelu": 1}
    assert fused.graph.node[0].attribute[0].s == b"none"
    assert fused.opset_import[0].version == 20
    assert len(report.matched) == 1 and not report.declined
    assert_same(model, fused, _feeds())


def test_tanh_form_as_gpt2_new_gelu():
    #  x ── Pow(3) ── Mul(0.044715) ── Add(x, ·) ── Mul(√(2/π)) ── Tanh ── Add(1) ──┐
    #  x ── Mul(0.5) ────────────────────────────────────────────────────────────── Mul ── y
    b, x = Builder(), _x()
    inner = b.op("Add", x, b.op("Mul", b.op("Pow", x, const("three", 3.0)), const("c", 0.044715)))
    t = b.op("Tanh", b.op("Mul", inner, const("k", float(np.sqrt(2 / np.pi)))))
    y = b.op("Mul", b.op("Mul", x, const("h", 0.5)), b.op("Add", t, const("one", 1.0)))
    model = b.model([x], [y])
    fused, report = apply(model, fuse_gelu, prepare=False)
    assert ops(fused) == {"Gelu": 1}
    assert fused.graph.node[0].attribute[0].s == b"tanh"
    assert_same(model, fused, _feeds())


def test_declines_wrong_constant_and_leaves_graph():
    # x / 2 (not √2) under Erf is no GELU: the graph must stay as it was, with a reason.
    b, x = Builder(), _x()
    one_plus = b.op("Add", b.op("Erf", b.op("Div", x, const("s", 2.0))), const("one", 1.0))
    y = b.op("Mul", b.op("Mul", x, one_plus), const("h", 0.5))
    model = b.model([x], [y])
    fused, report = apply(model, fuse_gelu, prepare=False)
    assert ops(fused) == ops(model)
    assert fused.opset_import[0].version == 18          # nothing fused, opset untouched
    assert report.declined and "√2" in report.declined[0]["reason"]
    assert_same(model, fused, _feeds())


def test_declines_when_intermediate_is_used_elsewhere():
    b, x = Builder(), _x()
    erf = b.op("Erf", b.op("Div", x, const("s", SQRT2)))
    y = b.op("Mul", b.op("Mul", x, b.op("Add", erf, const("one", 1.0))), const("h", 0.5))
    erf.dtype = np.float32
    model = b.model([x], [y, erf])                      # Erf output is also a graph output
    fused, report = apply(model, fuse_gelu, prepare=False)
    assert "Gelu" not in ops(fused)
    assert "used outside" in report.declined[0]["reason"]


@pytest.mark.parametrize("family,exporter,opset,form", [
    ("bert", "legacy", 17, b"none"),
    ("vit", "dynamo", 18, b"none"),
    ("gpt2", "dynamo", 18, b"tanh"),
    ("gpt2", "legacy", 17, b"tanh"),
])
def test_real_exports(tiny_export, family, exporter, opset, form):
    model = tiny_export(family, exporter, opset)
    fused, report = apply(model, fuse_gelu)
    gelus = [n for n in fused.graph.node if n.op_type == "Gelu"]
    assert len(gelus) == 2 and not report.declined       # one per layer, 2 layers
    assert all(n.attribute[0].s == form for n in gelus)
    assert not {"Erf", "Tanh"} & set(ops(fused))
    assert_same(model, fused, tiny_feeds(family))


def test_tanh_form_with_cube_as_products():
    # Gemma's gelu_pytorch_tanh through the legacy exporter: x³ = x·(x·x), constants first.
    b, x = Builder(), _x()
    cube = b.op("Mul", x, b.op("Mul", x, x))
    inner = b.op("Add", x, b.op("Mul", const("c", 0.044715), cube))
    t = b.op("Tanh", b.op("Mul", const("k", float(np.sqrt(2 / np.pi))), inner))
    y = b.op("Mul", b.op("Mul", x, const("h", 0.5)), b.op("Add", t, const("one", 1.0)))
    model = b.model([x], [y])
    fused, report = apply(model, fuse_gelu, prepare=False)
    assert ops(fused) == {"Gelu": 1} and fused.graph.node[0].attribute[0].s == b"tanh"
    assert_same(model, fused, _feeds())
