"""Verification's inputs: they must look like what generation feeds the model.

A static KV cache's inputs once had a random write position (cache_position) unrelated to
position_ids and to the slots attention reads ([0, kv_sequence)): the new tokens landed outside
that window and every query attended only to random K/V. SmolLM2 on such input is so
ill-conditioned that PyTorch fp32 itself differs from fp64 by 1.5e-3 on its deep caches, above
FP32's bound, and an exact-enough package failed verification.
"""

from __future__ import annotations

import numpy as np
import pytest

from decoder_packages import hf_model
from trtcompile.export.kv_cache import causal_lm_io, default_profile
from trtcompile.profiles import parse_profile
from trtcompile.runtime.checks import check_values
from trtcompile.runtime.shapes import TensorSpec
from trtcompile.verify import cases_for, make_feeds


@pytest.fixture(scope="module")
def static_inputs() -> tuple[list[TensorSpec], dict]:
    """The tiny Llama's static-cache inputs as its package declares them (shapes, value ranges)."""
    model = hf_model("llama")
    config = model.config.to_dict()
    io = causal_lm_io(model, config)
    specs = [TensorSpec(name, str(io.example_inputs[name].numpy().dtype), io.shapes[name],
                        io.value_ranges.get(name)) for name in io.input_names]
    return specs, default_profile(config, "static")


def _cases(profile: dict) -> list[dict]:
    cases = [dims for _, dims in cases_for(parse_profile(profile).buckets)]
    # Shrinking halves each dimension on its own, so a case may read fewer slots than it writes.
    return cases + [{"batch": 4, "sequence": 64, "kv_sequence": 33}]


def test_static_cache_writes_where_positions_say_inside_the_read_window(static_inputs):
    specs, profile = static_inputs
    for dims in _cases(profile):
        feeds = make_feeds(specs, dims, np.random.default_rng(0))
        new, kv = dims["sequence"], dims["kv_sequence"]
        write, positions = feeds["cache_position"], feeds["position_ids"]
        where = f"case {dims}"
        # Each row's new tokens are written at the positions rotary gives them ...
        np.testing.assert_array_equal(positions, write[:, None] + np.arange(new)[None], err_msg=where)
        # ... as the last slots attention reads (as generation writes them), never at a negative one.
        assert (write == max(0, kv - new)).all(), where
        if new <= kv:
            assert (write + new == kv).all(), where
        # The newest token attends to its own slot in every row (decode's mask hole ends before it).
        if new == 1:
            assert (feeds["attention_mask"][:, -1] == 1).all(), where
        check_values(specs, feeds)  # inside the package's declared value ranges (what Model.run checks)


def test_static_cache_write_position_range_covers_the_whole_cache(static_inputs):
    """A decode step at the cache's last slot is a valid input (Model.run must accept it)."""
    specs, _ = static_inputs
    spec = next(s for s in specs if s.name == "cache_position")
    max_cache = spec.value_range[1]
    assert spec.value_range == (0, max_cache) and max_cache == specs[-1].shape[2]


def test_a_static_cache_case_shrinks_the_batch_not_the_context():
    """A decode bucket's max case of a static cache: the 2 x layers present outputs are [batch, heads,
    max_cache, head_dim] whatever kv_sequence is, so over the byte limits the batch is halved, and the
    case still reads a long cache (it used to halve kv_sequence down to a handful of slots first)."""
    from trtcompile.profiles import Bucket
    from trtcompile.verify import MAX_CASE_BYTES

    present = [TensorSpec(f"present.{i}.{kv}", "float32", ["batch", 3, 2112, 64])
               for i in range(30) for kv in ("key", "value")]
    logits = TensorSpec("logits", "float32", ["batch", 1, 49152])
    bucket = Bucket("decode", {"batch": (1, 1, 8), "kv_sequence": (1, 256, 2112), "sequence": (1, 1, 1)})
    (_, opt), (_, top) = cases_for([bucket], [*present, logits])
    assert opt == {"batch": 1, "kv_sequence": 256, "sequence": 1}
    # 8 rows: 778 MB of present outputs; 1 row: 97 MB, under the 128 MB of a case
    assert top["batch"] == 1 and top["kv_sequence"] >= 1024, top
    assert 30 * 2 * 3 * 2112 * 64 * 4 * top["batch"] <= MAX_CASE_BYTES


def test_quantized_packages_are_held_to_finite_values_where_a_case_reads_a_random_cache(tmp_path):
    """A reference whose logits disagree completely (sign flipped) on the cases that read random cache
    slots: fails FP32's bounds, passes INT4's (finite, shaped), and a NaN there fails INT4 too."""
    from decoder_packages import compiled_decoder

    from trtcompile import runtime
    from trtcompile.compile import reference_source
    from trtcompile.settings import VerifySettings
    from trtcompile.verify import describe_failure, summary_line, verify

    package = compiled_decoder("llama", tmp_path)
    with runtime.load(package, backend="onnxruntime", threads=1) as model:
        generation = model.manifest.data["generation"]
        source = reference_source(model.manifest.schema.model.source, given=False, trust_remote_code=False,
                                  what="the test package", generation=generation)

        def diverging(poison):
            def reference(feeds):
                outputs = source.reference(feeds)
                if int(feeds["cache_position"].max()) > 0:  # new tokens after random cache slots
                    outputs = {**outputs, "logits": poison(np.asarray(outputs["logits"]))}
                return outputs
            return reference

        flipped, nan = diverging(lambda x: -x), diverging(lambda x: np.full_like(x, np.nan))
        strict = verify(model, flipped, precision="fp32", settings=VerifySettings())
        lenient = verify(model, flipped, precision="int4", settings=VerifySettings())
        poisoned = verify(model, nan, precision="int4", settings=VerifySettings())
    assert not strict["passed"] and "logits" in describe_failure(strict)
    assert lenient["passed"], summary_line(lenient)
    checked = [c for c in lenient["cases"] if "checked" in c]
    assert checked and len(checked) < len(lenient["cases"])  # prefill-only cases keep the bounds
    assert all(c["outputs"]["logits"]["cosine"] < -0.99 for c in checked)
    assert lenient["worst"]["logits"]["min_cosine"] > 0.99  # the finite-only cases are not in "worst"
    assert "checked for finite values only" in summary_line(lenient)
    assert not poisoned["passed"] and "is not finite" in describe_failure(poisoned)


def test_a_nan_anywhere_is_an_infinite_error():
    from trtcompile.verify import compare

    for bad in (np.nan, np.inf):
        actual = np.array([bad, 1.0, 2.0], np.float32)
        assert compare(actual, np.array([0.0, 1.0, 2.0], np.float32))["max_abs"] == float("inf")
        assert compare(np.array([0.0, 1.0, 2.0], np.float32), actual)["max_abs"] == float("inf")
    assert compare(np.array([1.0, 2.0]), np.array([1.0, 2.5]))["max_abs"] == 0.5
