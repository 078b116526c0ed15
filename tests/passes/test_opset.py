"""ensure_opset: raising the opset for a fused op must not break the ops left around it."""

import numpy as np
import onnx_graphsurgeon as gs

from fusion_helpers import Builder, apply, assert_same, const, ops
from test_fuse_layer_norm import _decomposed
from test_fuse_rms_norm import _rms
from trtcompile.passes.fuse_layer_norm import fuse_layer_norm
from trtcompile.passes.fuse_rms_norm import fuse_rms_norm


def test_reduce_axes_move_to_an_input_when_crossing_opset_18():
    #  x ── [RMS norm] ── y          (fused: needs opset 23)
    #  x ── ReduceMean(axes=[1]) ── pooled      (not fused: axes attribute must become an input)
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=["B", 5, 16])
    y = _rms(b, x)
    pooled = b.op("ReduceMean", x, attrs={"axes": [1], "keepdims": 0})
    # _rms writes opset-18 ReduceMean (axes input); rewrite it to the opset-17 attribute form.
    for node in b.nodes:
        if node.op == "ReduceMean" and len(node.inputs) == 2:
            node.attrs["axes"] = [int(v) for v in node.inputs[1].values]
            node.inputs.pop()
    model = b.model([x], [y, pooled], opset=17)
    fused, _ = apply(model, fuse_rms_norm, prepare=False)
    assert fused.opset_import[0].version == 23
    assert ops(fused) == {"RMSNormalization": 1, "ReduceMean": 1}
    reduce = next(n for n in fused.graph.node if n.op_type == "ReduceMean")
    assert len(reduce.input) == 2 and not reduce.attribute[0].name == "axes"
    assert_same(model, fused, {"x": np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)})


def test_below_opset_13_uses_the_version_converter():
    b, x = Builder(), gs.Variable("x", dtype=np.float32, shape=["B", 5, 16])
    y = b.op("Add", b.op("Mul", _decomposed(b, x, opset=11), const("w", np.ones(16, np.float32))),
             const("b", np.zeros(16, np.float32)))
    model = b.model([x], [y], opset=11)
    fused, report = apply(model, fuse_layer_norm, prepare=False)
    assert fused.opset_import[0].version == 17 and ops(fused) == {"LayerNormalization": 1}
    assert_same(model, fused, {"x": np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)})
