from pass_fixtures import tiny_feeds
from fusion_helpers import apply, assert_same, ops
from trtcompile.passes.fold_constants import fold_constants
from trtcompile.passes.fold_shapes import fold_shapes


def test_legacy_export_gets_shapes_and_loses_static_shape_arithmetic(tiny_export):
    # The legacy exporter writes no value_info, so fold_constants alone cannot fold Shape chains
    # on static dims; after inference the rotate_half Slice bounds (h/2) become constants.
    model = tiny_export("llama", "legacy", 17)
    assert not model.graph.value_info
    baseline, _ = apply(model, fold_constants, prepare=False)
    folded, report = apply(model, fold_constants, fold_shapes, prepare=False)
    assert sum(ops(folded).values()) < sum(ops(baseline).values()) - 40
    assert ops(folded)["Shape"] < ops(baseline)["Shape"]
    inits = {t.name for t in folded.graph.initializer}
    slices = [n for n in folded.graph.node if n.op_type == "Slice" and "self_attn" in n.name]
    assert slices and all(n.input[2] in inits for n in slices)
    assert_same(model, folded, tiny_feeds("llama"))


def test_dynamo_export_is_left_alone(tiny_export):
    model = tiny_export("llama", "dynamo", 18)
    folded, report = apply(model, fold_shapes)
    assert sum(ops(folded).values()) <= sum(ops(model).values())
    assert_same(model, folded, tiny_feeds("llama"))
