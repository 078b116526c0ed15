"""Bucket choice and symbolic shapes, as the runtime resolves them per call."""

import numpy as np
import pytest

from trtcompile.runtime.shapes import Bucket, InputError, TensorSpec, bind_dims, bucket_for

DECODER = [TensorSpec("input_ids", "int64", ["batch", "sequence"]),
           TensorSpec("attention_mask", "int64", ["batch", "past_sequence+sequence"]),
           TensorSpec("past.0.key", "float32", ["batch", 2, "past_sequence", 8])]
PREFILL = Bucket("prefill", {"batch": (1, 1, 4), "sequence": (1, 64, 256), "past_sequence": (0, 0, 0)})
DECODE = Bucket("decode", {"batch": (1, 1, 4), "sequence": (1, 1, 1), "past_sequence": (1, 128, 511)})


def feeds(batch, seq, past):
    return {"input_ids": np.zeros((batch, seq), np.int64),
            "attention_mask": np.ones((batch, past + seq), np.int64),
            "past.0.key": np.zeros((batch, 2, past, 8), np.float32)}


def test_sum_dimension_is_solved_and_checked():
    assert bind_dims(DECODER, feeds(2, 1, 37)) == {"batch": 2, "sequence": 1, "past_sequence": 37}
    bad = feeds(2, 1, 37)
    bad["attention_mask"] = np.ones((2, 40), np.int64)
    with pytest.raises(InputError, match=r"'attention_mask' dimension 1 is 40, expected past_sequence\+sequence = 38"):
        bind_dims(DECODER, bad)


def test_prefill_and_decode_pick_their_bucket():
    assert bucket_for([PREFILL, DECODE], DECODER, feeds(1, 17, 0)).name == "prefill"
    assert bucket_for([PREFILL, DECODE], DECODER, feeds(3, 1, 100)).name == "decode"


def test_smallest_fitting_bucket_wins():
    small = Bucket("small", {"batch": (1, 1, 2), "sequence": (1, 8, 16), "past_sequence": (0, 0, 0)})
    assert bucket_for([PREFILL, small], DECODER, feeds(1, 9, 0)).name == "small"
    assert bucket_for([PREFILL, small], DECODER, feeds(1, 17, 0)).name == "prefill"


def test_no_single_bucket_holds_a_combination():
    # sequence 5 fits prefill, past 3 fits decode, but no bucket has both.
    with pytest.raises(InputError, match=r"no single bucket holds batch=1, sequence=5, past_sequence=3"):
        bucket_for([PREFILL, DECODE], DECODER, feeds(1, 5, 3))


def test_static_dimension_mismatch():
    bad = feeds(1, 1, 4)
    bad["past.0.key"] = np.zeros((1, 3, 4, 8), np.float32)
    with pytest.raises(InputError, match=r"'past.0.key' dimension 1 is 3, expected 2"):
        bind_dims(DECODER, bad)
