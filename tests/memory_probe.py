"""Run in a subprocess by test_memory.py: compile a checkpoint, print peak RSS above the import baseline.

The interpreter plus torch, transformers, onnx and ONNX Runtime take a fixed ~0.5-0.9 GB that does
not grow with the model; what the goal bounds (<= 3x the fp32 checkpoint) is what comes on top.
"""

import json
import resource
import sys
from pathlib import Path


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(checkpoint: str, out: str) -> None:
    import onnx  # noqa: F401  (the fixed cost: every library compile uses, imported up front)
    import onnx_graphsurgeon  # noqa: F401
    import onnxruntime  # noqa: F401
    import onnxscript  # noqa: F401
    import torch  # noqa: F401
    import torch.onnx._internal.exporter._core  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM  # noqa: F401

    from trtcompile.compile import compile_package

    baseline = rss_mib()
    manifest = compile_package(checkpoint, Path(out))
    print(json.dumps({"baseline_mib": baseline, "peak_mib": rss_mib(),
                      "stages_mib": manifest.data["build"].get("peak_rss_mib", {}),
                      "timings_s": manifest.data["build"]["timings_s"]}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
