"""What lengths a model supports, and a profile checked against them before any work.

A BERT has 512 rows of learned positions, a Llama's config says how far its rotary positions were
trained. A bucket beyond that used to fail minutes later, as an index error inside verification;
now the profile is refused up front, naming the bucket, the limit and where the limit comes from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from trtcompile.errors import UserError
from trtcompile.runtime.shapes import eval_dim

# Initializers that are learned position tables: [positions, hidden].
_POSITION_TABLE = re.compile(r"(position_embeddings|wpe|embed_positions|pos_embed)[^/]*weight$|"
                             r"(position_embeddings|wpe)$", re.IGNORECASE)


@dataclass(frozen=True)
class AxisLimit:
    input: str  # model input name
    axis: int
    maximum: int
    why: str  # where the number comes from, for the message


def check_profile_limits(profile, limits: list[AxisLimit]) -> None:
    """Refuse a bucket whose max puts an input axis beyond the model's limit."""
    from trtcompile.profiles import STATIC

    for limit in limits:
        spec = profile.shape_of(limit.input)
        if spec is None or limit.axis >= len(spec) or spec[limit.axis] == STATIC:
            continue
        expr = spec[limit.axis]
        for bucket in profile.buckets:
            try:
                value = eval_dim(expr, {d: r[2] for d, r in bucket.dims.items()})
            except KeyError:
                continue
            if value > limit.maximum:
                raise UserError(
                    f"profile {profile.origin!r}: bucket {bucket.name!r} lets {limit.input!r} axis {limit.axis} "
                    f"({expr}) reach {value}, beyond the model's limit of {limit.maximum} ({limit.why})",
                    hint=f"lower the bucket's max so that {expr} <= {limit.maximum}")


def config_max_positions(config: dict) -> tuple[int, str] | None:
    """(positions, why) from a Hugging Face config, minus RoBERTa's padding offset."""
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if config.get(key):
            value = int(config[key])
            if config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
                # RoBERTa numbers positions from padding_idx + 1: that many rows are never reachable.
                offset = int(config.get("pad_token_id") or 0) + 1
                return value - offset, f"{key} {value} in config.json minus RoBERTa's padding offset {offset}"
            return value, f"{key} {value} in config.json"
    return None


def onnx_position_limits(model, input_names: list[str]) -> list[AxisLimit]:
    """A learned position table in an ONNX file bounds the sequence axis of its token inputs."""
    rows = [(init.name, int(init.dims[0])) for init in model.graph.initializer
            if len(init.dims) == 2 and _POSITION_TABLE.search(init.name)]
    if not rows:
        return []
    name, count = min(rows, key=lambda r: r[1])
    return [AxisLimit(inp, 1, count, f"the {count}-row position table {name!r} in the ONNX file")
            for inp in input_names if inp in ("input_ids", "attention_mask", "token_type_ids", "position_ids")]
