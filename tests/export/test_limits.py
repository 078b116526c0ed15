"""Profiles against what the model supports: defaults stay inside the limit, a profile beyond it is
refused up front with the limit and its origin named (it used to be an index error in verification)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtcompile.errors import UserError
from trtcompile.export import default_profile, load_source
from trtcompile.export.limits import check_profile_limits, onnx_position_limits
from trtcompile.profiles import parse_profile

ROOT = Path(__file__).parent.parent.parent


def max_of(profile, dim: str) -> int:
    return max(b.dims[dim][2] for b in profile.buckets)


def test_encoder_default_profile_reaches_the_positions_roberta_can_use(checkpoint):
    source = load_source(str(checkpoint("roberta")))  # 130 positions, 2 reserved by padding_idx 1
    profile = default_profile(source)
    assert max_of(profile, "sequence") == 128
    check_profile_limits(profile, source.axis_limits)


def test_encoder_profile_beyond_the_position_table_is_refused(checkpoint):
    source = load_source(str(checkpoint("bert")))  # max_position_embeddings 128
    profile = parse_profile({"inputs": {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
                                        "token_type_ids": ["batch", "sequence"]},
                             "buckets": {"long": {"batch": [1, 1, 2], "sequence": [1, 64, 256]}}}, origin="long.yaml")
    with pytest.raises(UserError, match=r"bucket 'long' lets 'input_ids' axis 1 \(sequence\) reach 256, beyond "
                                        r"the model's limit of 128 \(max_position_embeddings 128 in config.json\)"):
        check_profile_limits(profile, source.axis_limits)


def test_decoder_profile_beyond_the_context_is_refused_before_export(checkpoint, tmp_path):
    from trtcompile.compile import compile_package

    # The tiny Llama's context is 256; the shipped decoder profile's prefill alone reaches 512.
    with pytest.raises(UserError, match=r"'attention_mask' axis 1 \(past_sequence\+sequence\) reach 512, beyond "
                                        r"the model's limit of 256"):
        compile_package(str(checkpoint("llama")), tmp_path / "out", profile_path=ROOT / "profiles" / "decoder.yaml")
    assert not (tmp_path / "out").exists()
    source = load_source(str(checkpoint("llama")))
    check_profile_limits(default_profile(source), source.axis_limits)  # the default fits


def test_onnx_position_table_bounds_its_default_profile(tmp_path):
    # input_ids -> Gather(word table) + Gather(position table [32, 4], positions) -> Add
    words = numpy_helper.from_array(np.zeros((10, 4), np.float32), "embeddings.word_embeddings.weight")
    positions = numpy_helper.from_array(np.zeros((32, 4), np.float32), "embeddings.position_embeddings.weight")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["embeddings.word_embeddings.weight", "input_ids"], ["w"]),
         helper.make_node("Shape", ["input_ids"], ["shape"], start=1, end=2),
         helper.make_node("Squeeze", ["shape"], ["length"]),
         helper.make_node("Range", ["zero", "length", "one"], ["pos"]),
         helper.make_node("Gather", ["embeddings.position_embeddings.weight", "pos"], ["p"]),
         helper.make_node("Add", ["w", "p"], ["out"])],
        "g", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", "sequence", 4])],
        [words, positions, numpy_helper.from_array(np.array(0, np.int64), "zero"),
         numpy_helper.from_array(np.array(1, np.int64), "one")])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))

    source = load_source(str(path))
    (limit,) = onnx_position_limits(onnx.load(str(path)), ["input_ids"])
    assert (limit.input, limit.axis, limit.maximum) == ("input_ids", 1, 32)
    profile = default_profile(source)
    assert max_of(profile, "sequence") == 32
    too_long = parse_profile({"inputs": {"input_ids": ["batch", "sequence"]},
                              "buckets": {"b": {"batch": [1, 1, 1], "sequence": [1, 8, 64]}}})
    with pytest.raises(UserError, match="32-row position table 'embeddings.position_embeddings.weight'"):
        check_profile_limits(too_long, source.axis_limits)
