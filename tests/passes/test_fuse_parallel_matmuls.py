import numpy as np
import onnx_graphsurgeon as gs

from fusion_helpers import Builder, apply, assert_same, const, ops
from trtcompile.passes.fuse_parallel_matmuls import fuse_parallel_matmuls


def test_q_k_v_projections_become_one_matmul_and_a_split():
    #  x ── MatMul(Wq 16x16) ── q ──┐
    #  x ── MatMul(Wk 16x8) ─── k ──┼── (graph outputs)       x ── MatMul(W2 16x4) ── y2 (alone: left)
    #  x ── MatMul(Wv 16x8) ─── v ──┘
    rng = np.random.default_rng(0)
    b = Builder()
    x = gs.Variable("x", dtype=np.float32, shape=["B", 3, 16])
    x2 = gs.Variable("x2", dtype=np.float32, shape=["B", 3, 16])
    q, k, v = (b.op("MatMul", x, const(name, rng.standard_normal((16, n)).astype(np.float32)))
               for name, n in (("wq", 16), ("wk", 8), ("wv", 8)))
    y2 = b.op("MatMul", x2, const("w2", rng.standard_normal((16, 4)).astype(np.float32)))
    model = b.model([x, x2], [q, k, v, y2])
    fused, report = apply(model, fuse_parallel_matmuls, prepare=False)
    assert ops(fused) == {"MatMul": 2, "Split": 1}
    assert len(report.matched) == 1 and report.matched[0]["columns"] == 32
    feeds = {"x": rng.standard_normal((2, 3, 16)).astype(np.float32),
             "x2": rng.standard_normal((2, 3, 16)).astype(np.float32)}
    assert_same(model, fused, feeds, atol=1e-5)


def test_quantized_weights_are_left_alone():
    #  x ── MatMul(DequantizeLinear(Wq int8)) ──┐   weights behind a DequantizeLinear: not constants of
    #  x ── MatMul(DequantizeLinear(Wk int8)) ──┘   the graph, so nothing to join
    b = Builder()
    x = gs.Variable("x", dtype=np.float32, shape=[1, 16])
    outs = []
    for name in ("q", "k"):
        w = b.op("DequantizeLinear", gs.Constant(f"w{name}", np.ones((16, 8), np.int8)),
                 gs.Constant(f"s{name}", np.array(0.1, np.float32)), dtype=np.float32)
        outs.append(b.op("MatMul", x, w))
    model = b.model([x], outs)
    fused, report = apply(model, fuse_parallel_matmuls, prepare=False)
    assert ops(fused) == ops(model) and not report.matched


def test_weights_on_disk_are_joined_one_group_at_a_time(tmp_path):
    # A compile's graph refers to weights on disk (lazy_weights). The pass reads only the group it joins,
    # without caching the originals on their constants, and writes the joined weight out at once.
    import onnx

    from trtcompile import lazy_weights
    from trtcompile.onnx_io import to_graph, to_model
    from trtcompile.passes import PassContext, run_pipeline
    from trtcompile.settings import OptimizeSettings

    rng = np.random.default_rng(1)
    b = Builder()
    x = gs.Variable("x", dtype=np.float32, shape=["B", 256])
    q, k = (b.op("MatMul", x, const(name, rng.standard_normal((256, 768)).astype(np.float32))) for name in ("wq", "wk"))
    model = b.model([x], [q, k])
    onnx.save_model(model, str(tmp_path / "m.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.onnx.data", size_threshold=1024)
    graph = to_graph(lazy_weights.load_lazy(tmp_path / "m.onnx"))
    originals = [t for t in graph.tensors().values() if isinstance(t, gs.Constant)]
    assert all(isinstance(t._values, lazy_weights.ExternalValues) for t in originals)

    fused, _ = run_pipeline(graph, PassContext(settings=OptimizeSettings()), [fuse_parallel_matmuls])
    joined = [t for t in fused.tensors().values() if t.name.endswith("_joined_weight")]
    assert len(joined) == 1 and isinstance(joined[0]._values, lazy_weights.ExternalValues)  # on disk, 1.5 MiB
    assert all(isinstance(t._values, lazy_weights.ExternalValues) for t in originals)  # read, never cached
    feeds = {"x": rng.standard_normal((2, 256)).astype(np.float32)}
    with lazy_weights.inside_weights_dir(tmp_path):
        assert_same(onnx.load(str(tmp_path / "m.onnx")), to_model(fused), feeds, atol=1e-4)
