"""Calibration: run the FP32 graph in ONNX Runtime on CPU and collect statistics of chosen tensors.

The chosen tensors become extra graph outputs of an in-memory copy of the model (nothing is
written to the working directory, unlike onnxruntime.quantization's calibrators, which leave
~90 MB of augmented models behind). Per tensor: a histogram of |x| (ranges.AbsHistogram) and,
for SmoothQuant, the per-channel max |x| over the last axis; for AWQ, the per-channel mean |x|; for
GPTQ, the Gram matrix X^T X over the rows of real tokens (padding, where the feed's attention mask
says so, would weight the fit towards pad-token activations).
"""

from __future__ import annotations

import numpy as np
import onnx

from trtcompile.graph.session import ort_session  # noqa: F401 - calibration runs through it
from trtcompile.quantize.ranges import AbsHistogram

def collect(model: onnx.ModelProto, tensors: list[str], feeds: list[dict[str, np.ndarray]], *,
            per_channel: bool = False, sample_rows: int = 0, channel_mean: bool = False, gram: bool = False,
            description: str = "calibrating") -> dict[str, dict]:
    """{tensor: {"hist": AbsHistogram, "channel_amax": ndarray | None, "rows": ndarray | None,
    "channel_mean": ndarray | None, "gram": ndarray | None, "gram_rows": int}} over all feeds; "rows" keeps the first `sample_rows` rows
    ([N, channels]) of real tokens for SmoothQuant's alpha search and AWQ's scale search. Padded
    positions are in the histograms and channel statistics (calibration batches are mostly real tokens)."""
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    present = {o.name for o in augmented.graph.output}
    for name in tensors:
        if name not in present:
            augmented.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort_session(augmented, optimize=False)
    stats = {name: {"hist": AbsHistogram(), "channel_amax": None, "rows": None, "channel_mean": None,
                    "gram": None, "gram_rows": 0} for name in tensors}
    sums = {name: [0.0, 0] for name in tensors}
    with _progress(description, len(feeds)) as advance:
        for feed in feeds:
            values = session.run(tensors, feed)
            for name, value in zip(tensors, values):
                entry = stats[name]
                entry["hist"].add(value)
                if per_channel:
                    flat = np.abs(np.asarray(value, np.float32)).reshape(-1, value.shape[-1])
                    peak = flat.max(axis=0)
                    entry["channel_amax"] = peak if entry["channel_amax"] is None else np.maximum(
                        entry["channel_amax"], peak)
                if channel_mean:
                    flat = np.abs(np.asarray(value, np.float32)).reshape(-1, value.shape[-1])
                    sums[name][0] = sums[name][0] + flat.sum(axis=0, dtype=np.float64)
                    sums[name][1] += flat.shape[0]
                if gram:
                    real = real_token_rows(value, feed).astype(np.float64)
                    g = real.T @ real
                    entry["gram"] = g if entry["gram"] is None else entry["gram"] + g
                    entry["gram_rows"] += len(real)
                if sample_rows:
                    rows = real_token_rows(value, feed)  # a pad token's activations are no text's
                    have = 0 if entry["rows"] is None else len(entry["rows"])
                    if have < sample_rows:
                        # Evenly spaced rows from every batch, not the first rows of the first one.
                        quota = min(sample_rows - have, -(-sample_rows // len(feeds)), len(rows))
                        take = rows[np.linspace(0, len(rows) - 1, quota).astype(np.int64)]
                        entry["rows"] = take if entry["rows"] is None else np.concatenate([entry["rows"], take])
            advance()
    if channel_mean:
        for name, (total, count) in sums.items():
            stats[name]["channel_mean"] = np.asarray(total, np.float64) / max(count, 1)
    return stats


def real_token_rows(value: np.ndarray, feed: dict[str, np.ndarray]) -> np.ndarray:
    """The rows [N, channels] of a [B, S, ..., C] activation at real (unpadded) tokens: the
    feed's attention mask, its last S columns (a cache's mask also covers past positions), when
    the leading axes are [B, S]; every row otherwise."""
    value = np.asarray(value, np.float32)
    mask = feed.get("attention_mask")
    if mask is not None and value.ndim >= 3 and mask.ndim == 2 and mask.shape[0] == value.shape[0] \
            and mask.shape[1] >= value.shape[1]:
        keep = np.asarray(mask)[:, -value.shape[1]:].astype(bool)
        return value[keep].reshape(-1, value.shape[-1])
    return value.reshape(-1, value.shape[-1])


class _progress:
    """A rich progress bar on a terminal, nothing otherwise."""

    def __init__(self, description: str, total: int):
        self.description, self.total, self.progress = description, total, None

    def __enter__(self):
        import sys

        if sys.stderr.isatty():
            try:
                from rich.progress import Progress

                self.progress = Progress(transient=True)
                self.progress.__enter__()
                task = self.progress.add_task(self.description, total=self.total)
                return lambda: self.progress.advance(task)
            except ImportError:  # pragma: no cover
                pass
        return lambda: None

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
