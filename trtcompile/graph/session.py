"""An ONNX Runtime session on an in-memory model, for calibration, FP16 overflow probes and checks."""

from __future__ import annotations

import onnx

from trtcompile.lazy_weights import inside_weights_dir, weights_dir
from trtcompile.onnx_io import fix_ir_version

_INLINE_LIMIT = 2**31 - 2**24  # protobuf's 2 GB, less headroom


def ort_session(model: onnx.ModelProto, *, optimize: bool = False, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    fix_ir_version(model)  # the IR version ONNX Runtime loads
    if model.ByteSize() < _INLINE_LIMIT:
        # A lazy model's weights stay on disk: ONNX Runtime reads them from there, not from a copy.
        with inside_weights_dir(weights_dir(model)):
            return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    # Over protobuf's 2 GB: through a temp file with external weights, kept as long as the session.
    import tempfile
    from pathlib import Path

    from trtcompile.onnx_io import save_model

    tmp = tempfile.TemporaryDirectory(prefix="trtcompile-ort-")
    path = save_model(model, Path(tmp.name) / "model.onnx")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    session._trtcompile_tmp = tmp
    return session
