"""Shared test helpers: run ONNX in ONNX Runtime, compare against a reference."""

from __future__ import annotations

import numpy as np
import onnx


def ort_session(model: "onnx.ModelProto | str"):
    import onnxruntime as ort

    from trtcompile.onnx_io import fix_ir_version

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    if isinstance(model, onnx.ModelProto):
        model = fix_ir_version(model).SerializeToString()
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def ort_run(model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run with ORT's own graph optimizations off, so what is checked is our graph."""
    sess = ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def assert_close(actual: np.ndarray, expected: np.ndarray, atol: float, what: str = "") -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    err = float(np.abs(actual - expected).max()) if actual.size else 0.0
    assert err <= atol, f"{what}: max abs error {err:.3g} > {atol}"
    return err


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))
