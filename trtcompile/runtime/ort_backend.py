"""ONNX Runtime backend: the package's model.onnx, for machines without TensorRT or a GPU.

Runs exactly the graph that TensorRT is given, so it is also how a package is verified here.
"""

from __future__ import annotations

import numpy as np

from trtcompile.runtime.manifest import Manifest, PackageError, check_sha256
from trtcompile.runtime.shapes import Bucket


# 4: activations quantized to int8 per block inside MatMulNBits (ORT's default, the fast CPU path);
# 0/1: FP32 compute. `trtcompile bench precision --llm` measures both on SmolLM2.
MATMULNBITS_ACCURACY_LEVEL = 4


# How long (microseconds) an idle intra-op thread spins for the next op before it sleeps, and only
# while a Run is in progress (`session.force_spinning_stop`). A decode step is a few hundred ops with
# gaps of a few microseconds: a worker that sleeps between them pays a futex wake-up per parallel
# op, while one that spins without bound takes a core from every other process. A short bounded
# spin gets most of the quiet-machine speed of spinning and little of its cost under contention.
# SmolLM2-135M, 2 threads, context 16, ms/token quiet / with one busy process (2026-11-30, `trtcompile
# bench generate --tables 4 --contended default,spin10,spin25,nospin`): no spin 32.5 / 43.3, 10 us
# 30.0 / 45.2, 25 us 29.2 / 47.9, 50 us 28.5 / 51.9; in another run that day ORT's unbounded
# spinning 27.2 / 56.9 against no spin 31.2 / 41.3.
DEFAULT_SPIN_US = 10


def spin_config(spinning: bool | int) -> dict[str, str]:
    """ORT session config for `spinning`: False/0 never spins, True spins as ORT does by default (idle
    threads keep spinning between runs too), an int spins that many microseconds, during runs only."""
    if isinstance(spinning, bool):
        flag = "1" if spinning else "0"
        return {"session.intra_op.allow_spinning": flag, "session.inter_op.allow_spinning": flag}
    if not isinstance(spinning, int) or spinning < 0:
        raise ValueError(f"spinning={spinning!r} is not True, False or a number of microseconds >= 0")
    if spinning == 0:
        return spin_config(False)
    return {"session.intra_op.allow_spinning": "1", "session.inter_op.allow_spinning": "1",
            "session.intra_op.spin_duration_us": str(spinning), "session.force_spinning_stop": "1"}


def session_options(*, threads: int | None = None, spinning: bool | int = DEFAULT_SPIN_US,
                    config: dict[str, str] | None = None):
    """The runtime's ORT session options (the benchmarks build theirs here too, so they measure the same)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    for key, value in spin_config(spinning).items():
        opts.add_session_config_entry(key, value)
    for key, value in (config or {}).items():  # any other ORT session config entry
        opts.add_session_config_entry(str(key), str(value))
    opts.log_severity_level = 3
    # INT4 weights (DequantizeLinear + MatMul) become MatMulNBits; this picks its compute type.
    opts.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(MATMULNBITS_ACCURACY_LEVEL))
    return opts


# Weights onto 2 MiB pages (runtime/huge_pages.py): while loading (True), in a background thread
# after load returns ("background": ready sooner, the first steps partly on 4 KiB pages), or not.
HUGE_PAGES = (True, False, "background")


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, manifest: Manifest, *, providers: list[str] | None = None, threads: int | None = None,
                 spinning: bool | int = DEFAULT_SPIN_US, config: dict[str, str] | None = None,
                 huge_pages: bool | str = True):
        from trtcompile.runtime.huge_pages import NewMemory

        if huge_pages not in HUGE_PAGES:
            raise ValueError(f"huge_pages={huge_pages!r} is not one of {HUGE_PAGES}: True collapses the weights "
                             f"onto huge pages while loading, 'background' after load returns, False not at all")

        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise PackageError("backend 'onnxruntime' needs the onnxruntime package: "
                               "pip install onnxruntime") from exc
        opts = session_options(threads=threads, spinning=spinning, config=config)
        model_file = manifest.data.get("model_file", "model.onnx")
        for name in (model_file, model_file + ".data"):
            check_sha256(manifest, name)
        # The weights (and ORT's prepacked copies) on 2 MiB pages: decode streams them every step.
        with NewMemory(enabled=bool(huge_pages), background=huge_pages == "background") as self.huge_pages:
            self.session = ort.InferenceSession(str(manifest.path(model_file)),
                                                opts, providers=providers or ["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray], bucket: Bucket) -> dict[str, np.ndarray]:
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def close(self) -> None:
        self.huge_pages.stop()  # before the session's memory goes
        self.session = None
