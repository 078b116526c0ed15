"""fold_constants: weights read by one Transpose are folded one at a time in numpy; a weight several
nodes read (a tied embedding) is never folded into a second copy."""

import numpy as np
import onnx_graphsurgeon as gs

from fusion_helpers import Builder, apply, assert_same, ops
from trtcompile.passes.fold_constants import fold_constants


def test_tied_embedding_stays_one_initializer_and_linear_weights_fold():
    #  ids ── Gather(E) ── h ── MatMul(Transpose(W)) ── h2 ── MatMul(Transpose(E)) ── logits
    #  E [vocab 96, hidden 64] is read by the Gather and the lm_head Transpose: kept, one copy.
    #  W [64, 64] is read by its Transpose alone: folded into W^T.
    rng = np.random.default_rng(0)
    E = gs.Constant("embedding", rng.standard_normal((96, 64)).astype(np.float32))
    W = gs.Constant("linear", rng.standard_normal((64, 64)).astype(np.float32))
    b, ids = Builder(), gs.Variable("ids", dtype=np.int64, shape=[2, 5])
    h = b.op("Gather", E, ids, dtype=np.float32)
    h2 = b.op("MatMul", h, b.op("Transpose", W, attrs={"perm": [1, 0]}, dtype=np.float32), dtype=np.float32)
    logits = b.op("MatMul", h2, b.op("Transpose", E, attrs={"perm": [1, 0]}, dtype=np.float32))
    model = b.model([ids], [logits])

    folded, report = apply(model, fold_constants, prepare=False)
    inits = {i.name: tuple(i.dims) for i in folded.graph.initializer}
    assert sum(1 for d in inits.values() if sorted(d) == [64, 96]) == 1 and inits["embedding"] == (96, 64)
    assert ops(folded) == {"MatMul": 2, "Gather": 1, "Transpose": 1}  # only lm_head's Transpose is left
    transpose = next(n for n in folded.graph.node if n.op_type == "Transpose")
    assert list(transpose.input) == ["embedding"]
    assert any("shared weight" in n and "embedding" in n for n in report.notes)
    assert_same(model, folded, {"ids": rng.integers(0, 96, (2, 5))}, atol=1e-4)
