"""Weights on transparent huge pages (runtime/huge_pages.py): the kernel really backs what a new ONNX
Runtime session allocated with 2 MiB pages, only that memory is touched, results stay bit-identical,
and it can be turned off."""

from __future__ import annotations

import errno
import gc
import mmap
import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtcompile.runtime import huge_pages

needs_thp = pytest.mark.skipif(not huge_pages.available(),
                               reason=f"transparent huge pages are {huge_pages.thp_mode() or 'not available'} here")
MiB = 2**20


def _anon_huge_bytes() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return int(re.search(r"AnonHugePages:\s+(\d+) kB", f.read()).group(1)) * 1024


def _matmul_model(k: int = 2048, n: int = 8192) -> bytes:
    """x [1, k] @ W [k, n]: 64 MiB of FP32 weights, which ORT copies into its own (prepacked) buffers.
    Above glibc's largest mmap threshold (32 MiB), so the copy is a fresh mapping whatever the
    process freed before (a smaller one may reuse heap memory mapped before the block)."""
    weight = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "matmul",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
                              [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]).SerializeToString()


def _session(model: bytes):
    import onnxruntime as ort

    from trtcompile.runtime.ort_backend import session_options

    return ort.InferenceSession(model, session_options(threads=1), providers=["CPUExecutionProvider"])


@needs_thp
def test_a_new_sessions_weights_are_backed_by_huge_pages_and_compute_the_same():
    model = _matmul_model()
    plain = _session(model)
    gc.collect()  # no earlier test's huge-page arrays freed inside the block, shrinking the count
    before = _anon_huge_bytes()
    with huge_pages.NewMemory() as new:
        paged = _session(model)
    gained = _anon_huge_bytes() - before
    # At least the 2 MiB-aligned inside of the session's fresh 64 MiB mapping (62 MiB or more).
    assert new.skipped is None and new.advised >= 62 * MiB, new.report()
    if new.collapse_errno == errno.EINVAL:
        pytest.skip("this kernel has no MADV_COLLAPSE (Linux < 6.1): khugepaged collapses the advised memory later")
    # The session's own copy of the 64 MiB weight is now on 2 MiB pages, as the kernel counts them.
    assert new.collapsed >= 62 * MiB and gained >= 60 * MiB, (new.report(), gained)
    assert "MiB" in new.report()
    x = np.random.default_rng(1).standard_normal((1, 2048), dtype=np.float32)
    np.testing.assert_array_equal(paged.run(None, {"x": x})[0], plain.run(None, {"x": x})[0])


@needs_thp
def test_a_background_collapse_backs_the_same_memory_after_the_block_and_can_be_stopped():
    model = _matmul_model()
    gc.collect()
    before = _anon_huge_bytes()
    with huge_pages.NewMemory(background=True) as new:
        paged = _session(model)
    assert new.advised >= 62 * MiB, new.report()
    assert new.wait(timeout=120), "the background collapse did not finish in 2 minutes"
    if new.collapse_errno == errno.EINVAL:
        pytest.skip("this kernel has no MADV_COLLAPSE (Linux < 6.1): khugepaged collapses the advised memory later")
    assert new.collapsed >= 62 * MiB and _anon_huge_bytes() - before >= 60 * MiB, new.report()
    assert "still collapsing" not in new.report()
    assert paged.run(None, {"x": np.ones((1, 2048), np.float32)})[0].shape == (1, 8192)

    # Stopped before its first call (as a backend closing at once does): it ends without collapsing.
    with huge_pages.NewMemory(background=True) as early:
        early._stopping.set()
        # A new anonymous mapping for certain (malloc may serve even 64 MiB from memory it holds).
        fresh = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        fresh.write(b"x" * (64 * MiB))
    early.stop()
    fresh.close()
    assert early.wait(timeout=0) and early.collapsed == 0 and early.advised >= 62 * MiB


def test_the_backend_refuses_an_unknown_huge_pages_setting(tmp_path):
    from trtcompile.runtime.ort_backend import OnnxRuntimeBackend

    with pytest.raises(ValueError, match=r"huge_pages='sometimes' is not one of \(True, False, 'background'\)"):
        OnnxRuntimeBackend(None, huge_pages="sometimes")


@needs_thp
def test_memory_that_existed_before_is_left_alone():
    existing = np.ones(32 * MiB // 8)  # touched before the block: not the block's to advise
    start, end = existing.ctypes.data, existing.ctypes.data + existing.nbytes
    with huge_pages.NewMemory() as new:
        pass
    assert new.advised == 0 and new.collapsed == 0
    # It is listed, so the block saw it and left it (numpy's own madvise may split it into mappings).
    regions = huge_pages.writable_anonymous_regions()
    assert any(lo <= start < hi for lo, hi in regions.items()) and any(lo < end <= hi for lo, hi in regions.items())


def test_nothing_happens_where_the_kernel_has_no_huge_pages(monkeypatch):
    monkeypatch.setattr(huge_pages, "THP_SETTING", "/nonexistent/transparent_hugepage/enabled")
    assert huge_pages.thp_mode() is None and not huge_pages.available()
    with huge_pages.NewMemory() as new:
        _session(_matmul_model(256, 256))
    assert new.advised == 0 and new.skipped == "transparent huge pages are not available here"
    assert new.report() == "huge pages: off (transparent huge pages are not available here)"
