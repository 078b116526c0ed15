"""Rotary position embedding -> ONNX `RotaryEmbedding` (opset 23), correct for any batch size.

Two jobs, both for Llama/Mistral/Qwen-style decoders (and GPT-J/NeoX-style interleaving):

1. Fuse the decomposition every exporter except dynamo at 23 leaves, per Q and K per layer:
```
  half-rotation (HF rotate_half)            interleaved (GPT-J rotate_every_two)
  x ─┬─ Slice[:h/2] ───────────┐             x ─┬─ Slice[0::2] ── Unsqueeze(-1) ──────┐
     ├─ Slice[h/2:] ── Neg ── Concat(-1)     ├─ Slice[1::2] ── Neg ── Unsqueeze(-1) ─ Concat(-1) ── Reshape
     │                           │           │                                               │
     └─ Mul(cos) ─── Add ◀── Mul(sin)        └─ Mul(cos) ─── Add ◀── Mul(sin) ◀──────────────┘
  =>  RotaryEmbedding(x, cos_cache, sin_cache, interleaved=0|1)
```
   x is [B, N, S, H] (HF Llama/Mistral/Qwen/Phi-3/Gemma/NeoX) or [B, S, N, H] (GPT-J; then the
   op gets Transposes around it). x may itself be a slice of the head (partial rotary).
   HF's cos/sin are [b, S, H] with each half (or each pair) duplicated, unsqueezed on the head
   axis; the op wants the non-duplicated [B, S, H/2]. We only fuse when the duplication is
   proven: a constant whose halves are equal, `Concat(f, f)` under elementwise ops (Cos, Sin,
   Cast, scalar Mul...), which we then rebuild on f, or GPT-J's repeat_interleave(f, 2). The cache
   is expanded to x's batch and sequence, since positions computed from `arange` have batch 1.

2. Repair the dynamo exporter's own opset-23 RotaryEmbedding: its cos/sin caches are 3-D with
   batch 1 (positions from `arange`, no position_ids input), and ONNX Runtime rejects batch > 1
   (the spec wants the 3-D cache's batch to equal the input's). Expand the caches to the input's
   batch: Expand(cache, [B, 1, 1]).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from trtcompile.passes._match import (const_value, escapes, other_input, producer, rank, scalar, single_consumer,
                                      split_const)
from trtcompile.graph.context import PassContext
from trtcompile.passes.fusion import Decline, run_fusion

OPSET = 23
_UNARY = ("Cos", "Sin", "Cast", "Identity", "Neg")
_SCALAR_BINARY = ("Mul", "Div", "Add", "Sub")
_BIG = 2**31 - 1


def _slice_params(node: gs.Node):
    """(start, end, axis, step) of a Slice with constant single-axis parameters, else None."""
    if node is None or node.op != "Slice" or len(node.inputs) < 3:
        return None
    vals = [const_value(t) if t is not None and t.name else None for t in node.inputs[1:5]]
    vals += [None] * (4 - len(vals))
    start, end, axes, steps = vals
    if start is None or end is None or start.size != 1 or end.size != 1:
        return None
    axis = int(axes.reshape(-1)[0]) if axes is not None and axes.size == 1 else (None if axes is not None else 0)
    step = int(steps.reshape(-1)[0]) if steps is not None and steps.size == 1 else (None if steps is not None else 1)
    if axis is None or step is None:
        return None
    return int(start.reshape(-1)[0]), int(end.reshape(-1)[0]), axis, step


def _is_last(axis: int, r: int | None) -> bool:
    return axis == -1 or (r is not None and axis == r - 1)


def _head_size(x: gs.Tensor) -> int | None:
    shape = getattr(x, "shape", None)
    if shape and len(shape) == 4 and isinstance(shape[-1], int) and shape[-1] > 0:
        return shape[-1]
    return None


def _match_rotation(neg: gs.Node):
    """From the Neg of a rotation: (x, mode, nodes, rotated), or Decline."""
    x2 = producer(neg.inputs[0], "Slice")
    p2 = _slice_params(x2)
    if p2 is None:
        raise Decline("Neg input is not a Slice with constant parameters")
    x = x2.inputs[0]
    r = rank(x)
    if r is not None and r != 4:
        raise Decline(f"rotated tensor has rank {r}, not [B, N, S, H]")
    head = _head_size(x)
    if head is None:
        raise Decline("head size of the rotated tensor unknown (run fold_shapes first)")
    half = head // 2
    start2, end2, axis2, step2 = p2
    if not _is_last(axis2, 4):
        raise Decline("slices are not on the last axis")
    if step2 == 1:
        mode = "half"
        if start2 != half or end2 < head:
            raise Decline(f"second half slice is [{start2}:{end2}], not [{half}:]")
        concat = single_consumer(neg.outputs[0], "Concat")
        if concat is None or len(concat.inputs) != 2 or concat.inputs[0] is not neg.outputs[0] \
                or not _is_last(int(concat.attrs.get("axis", 0)), 4):
            raise Decline("-x2 is not concatenated first on the last axis")
        x1 = producer(concat.inputs[1], "Slice")
        p1 = _slice_params(x1)
        if p1 is None or x1.inputs[0] is not x or p1[0] != 0 or p1[1] != half or p1[3] != 1 \
                or not _is_last(p1[2], 4):
            raise Decline("Concat's second input is not x[..., :h/2]")
        return x, mode, [x1, x2, neg, concat], concat.outputs[0]
    if step2 == 2:
        mode = "interleaved"
        if start2 != 1:
            raise Decline(f"odd-element slice starts at {start2}")
        u2 = single_consumer(neg.outputs[0], "Unsqueeze")
        if u2 is None or not _unsqueezes_last(u2):
            raise Decline("interleaved: -x2 is not unsqueezed on a new last axis")
        concat = single_consumer(u2.outputs[0], "Concat")
        if concat is None or len(concat.inputs) != 2 or concat.inputs[0] is not u2.outputs[0]:
            raise Decline("interleaved: -x2 is not stacked first")
        u1 = producer(concat.inputs[1], "Unsqueeze")
        x1 = producer(u1.inputs[0], "Slice") if u1 is not None and _unsqueezes_last(u1) else None
        p1 = _slice_params(x1)
        if p1 is None or x1.inputs[0] is not x or p1[0] != 0 or p1[3] != 2:
            raise Decline("interleaved: second stacked input is not x[..., 0::2]")
        reshape = single_consumer(concat.outputs[0], "Reshape")
        if reshape is None:
            readers = sorted({c.op for c in concat.outputs[0].outputs})
            raise Decline(f"interleaved: stacked pairs are read by {readers}, not by one Reshape back to x's shape")
        target = const_value(reshape.inputs[1])
        exact = target is not None and target.size == 4 and int(target[-1]) == head \
            and all(int(t) == 0 for t in target[:3]) and not reshape.attrs.get("allowzero", 0)
        shape = getattr(reshape.outputs[0], "shape", None)
        if not exact and (shape is None or list(shape) != list(x.shape)):
            raise Decline("interleaved: stacked pairs are not flattened back to x's shape")
        return x, mode, [x1, x2, neg, u1, u2, concat, reshape], reshape.outputs[0]
    raise Decline(f"slice step {step2} is neither 1 (half rotation) nor 2 (interleaved)")


def _unsqueezes_last(node: gs.Node) -> bool:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = const_value(node.inputs[1])
    if axes is None or np.asarray(axes).size != 1:
        return False
    axis = int(np.asarray(axes).reshape(-1)[0])
    out_rank = rank(node.outputs[0])
    return axis == -1 or (out_rank is not None and axis == out_rank - 1) or axis == 4


@dataclass
class RotaryMatch:
    x: gs.Tensor  # the tensor rotated, [B, N, S, H] or [B, S, N, H]
    mode: str  # "half" (rotate_half) or "interleaved"
    nodes: list[gs.Node]
    cos: gs.Tensor
    sin: gs.Tensor
    output: gs.Tensor


def _match(graph: gs.Graph, neg: gs.Node) -> RotaryMatch:
    x, mode, nodes, rotated = _match_rotation(neg)
    m_sin = single_consumer(rotated, "Mul")
    if m_sin is None:
        raise Decline("rotated x is not multiplied by sin alone")
    sin = other_input(m_sin, rotated)
    add = single_consumer(m_sin.outputs[0], "Add")
    if add is None:
        raise Decline("rotated·sin is not added to anything")
    m_cos = producer(other_input(add, m_sin.outputs[0]), "Mul")
    cos = other_input(m_cos, x) if m_cos is not None else None
    if cos is None:
        raise Decline("rotated·sin is not added to x·cos")
    nodes = nodes + [m_sin, m_cos, add]
    leak = escapes(graph, nodes, add.outputs[0])
    if leak is not None:
        raise Decline(f"intermediate {leak.name!r} is used outside the rotary embedding")
    layouts = set()
    for what, t in (("cos", cos), ("sin", sin)):
        found = _cache_source(t, mode, _head_size(x))
        if isinstance(found, str):
            raise Decline(f"{what}: {found}")
        source, layout, halved = found
        layouts.add(layout)
        if not halved and not _duplicated(source, mode, _head_size(x)):
            raise Decline(f"{what}: duplication across the rotated halves not provable")
    if len(layouts) != 1:
        raise Decline("cos and sin broadcast over different axes")
    return RotaryMatch(x, mode, nodes, cos, sin, add.outputs[0])


def _duplicated(t, mode: str, head: int) -> bool:
    """Whether t[..., first half] == t[..., second half] (or even == odd elements) is provable;
    the same recursion _CacheBuilder.halve builds on."""
    value = t if isinstance(t, np.ndarray) else const_value(t)
    if value is not None:
        if value.shape[-1] != head:
            return False
        a, b = (value[..., : head // 2], value[..., head // 2:]) if mode == "half" else (value[..., 0::2], value[..., 1::2])
        return bool(np.array_equal(a, b))
    node = producer(t)
    if node is None:
        return False
    if mode == "half" and node.op == "Concat" and len(node.inputs) == 2 and node.inputs[0] is node.inputs[1]:
        return _is_last(int(node.attrs.get("axis", 0)), rank(t))
    if node.op in _UNARY:
        return _duplicated(node.inputs[0], mode, head)
    if node.op in _SCALAR_BINARY:
        const, other = split_const(node)
        return const is not None and scalar(const) is not None and _duplicated(other, mode, head)
    return False


_HEAD_AXIS = {1: "bnsh", -3: "bnsh", 2: "bsnh", -2: "bsnh"}


def _axes(node: gs.Node) -> list[int] | None:
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1:
        axes = const_value(node.inputs[1])
    return None if axes is None else [int(a) for a in np.asarray(axes).ravel()]


def _cache_source(t: gs.Tensor, mode: str, head: int):
    """Where the cache `t` (broadcast against x) comes from: (rank-3 [b, S, H] tensor or array,
    layout of x, whether it is already the non-duplicated [b, S, H/2]), or a reason.

    x is [B, N, S, H] ("bnsh", HF Llama: cos unsqueezed on axis 1) or [B, S, N, H] ("bsnh",
    GPT-J/NeoX-style: axis 2)."""
    value = const_value(t)
    if value is not None:
        if value.ndim > 4:
            return "constant cache of rank > 4"
        value = value.reshape((1,) * (4 - value.ndim) + value.shape)
        if value.shape[1] == 1:
            return value[:, 0], "bnsh", False
        if value.shape[2] == 1:
            return value[:, :, 0], "bsnh", False
        return "constant cache varies over heads"
    node = producer(t)
    if node is not None and node.op == "Unsqueeze":
        axes = _axes(node)
        if axes is None or len(axes) != 1 or axes[0] not in _HEAD_AXIS:
            return f"cache unsqueezed on axes {axes}, not a head axis (1 or 2)"
        if rank(node.inputs[0]) not in (None, 3):
            return f"cache has rank {rank(node.inputs[0])}, not [b, S, H]"
        return node.inputs[0], _HEAD_AXIS[axes[0]], False
    if mode == "interleaved" and node is not None and node.op == "Reshape":
        found = _repeat_interleave(node, head)
        if found is not None:
            return found
    return "not Unsqueeze(cache, head axis), repeat_interleave(cache, 2) nor a constant"


def _repeat_interleave(reshape: gs.Node, head: int):
    """torch.repeat_interleave(a[:, :, None, :], 2, 3) as dynamo writes it:
    Reshape(Expand(Unsqueeze(a, [head axis, 4]), [..., 2]), [..., H]) -> (a, layout, True)."""
    expand = producer(reshape.inputs[0], "Expand")
    unsq = producer(expand.inputs[0], "Unsqueeze") if expand is not None else None
    if unsq is None:
        return None
    axes = sorted(_axes(unsq) or [])
    target, final = const_value(expand.inputs[1]), const_value(reshape.inputs[1])
    if len(axes) != 2 or axes[1] != 4 or axes[0] not in (1, 2) or target is None or target.size != 5 \
            or int(target[-1]) != 2 or final is None or final.size != 4 or int(final[-1]) != head:
        return None
    if rank(unsq.inputs[0]) not in (None, 3):
        return None
    return unsq.inputs[0], _HEAD_AXIS[axes[0]], True


class _CacheBuilder:
    """Builds the non-duplicated, batch-expanded caches, sharing them between layers."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.memo: dict = {}
        self.batch: dict = {}
        self.targets: dict[bool, gs.Variable] = {}   # [B, 1, 1] / [B, S, 1] from the first rotated input
        self.used: set[str] | None = None
        self.count = 0

    def add(self, op: str, inputs, attrs=None, name: str = "rope") -> gs.Variable:
        out = gs.Variable(self.graph_unique(name))
        self.graph.nodes.append(gs.Node(op, name=out.name, attrs=attrs or {}, inputs=list(inputs), outputs=[out]))
        return out

    def graph_unique(self, base: str) -> str:
        # Checked against the graph: a model optimized twice must not get a second "rope/Shape_0".
        if self.used is None:
            self.used = set(self.graph.tensors()) | {n.name for n in self.graph.nodes}
        while True:
            self.count += 1
            name = f"rope/{base}_{self.count}"
            if name not in self.used:
                self.used.add(name)
                return name

    def halve(self, t, mode: str, head: int):
        """t[..., :head/2] (half) or t[..., 0::2] (interleaved), only where the other half is equal."""
        key = (id(t), mode) if not isinstance(t, np.ndarray) else None
        if key is not None and key in self.memo:
            return self.memo[key]
        result = self._halve(t, mode, head)
        if key is not None:
            self.memo[key] = result
        return result

    def _halve(self, t, mode: str, head: int):
        value = t if isinstance(t, np.ndarray) else const_value(t)
        if value is not None:
            if value.shape[-1] != head:
                return None
            a, b = (value[..., : head // 2], value[..., head // 2:]) if mode == "half" else (value[..., 0::2], value[..., 1::2])
            return gs.Constant(self.graph_unique("cache"), np.ascontiguousarray(a)) if np.array_equal(a, b) else None
        node = producer(t)
        if node is None:
            return None
        if mode == "half" and node.op == "Concat" and len(node.inputs) == 2 and node.inputs[0] is node.inputs[1] \
                and _is_last(int(node.attrs.get("axis", 0)), rank(t)):
            return node.inputs[0]
        if node.op in _UNARY:
            inner = self.halve(node.inputs[0], mode, head)
            return None if inner is None else self.add(node.op, [inner], dict(node.attrs), node.op.lower())
        if node.op in _SCALAR_BINARY:
            const, other = split_const(node)
            if const is None or scalar(const) is None:
                return None
            inner = self.halve(other, mode, head)
            if inner is None:
                return None
            inputs = [inner, const] if node.inputs[1] is const else [const, inner]
            return self.add(node.op, inputs, dict(node.attrs), node.op.lower())
        return None

    def for_batch_of(self, cache: gs.Tensor, x: gs.Tensor, with_seq: bool = False) -> gs.Tensor:
        """Expand(cache [b, s, h], [B, 1, 1]) with B read from x: the spec's 3-D cache is per batch.
        with_seq (x is [B, N, S, H]): Expand to [B, S, 1], for caches constant over positions."""
        # The exporter recomputes Cos/Sin per layer: key on (op, input) so every layer shares one.
        node = producer(cache)
        key = (node.op, id(node.inputs[0])) if node is not None and node.op in _UNARY and not node.attrs \
            else id(cache)
        key = (key, with_seq)
        if key in self.batch:
            return self.batch[key]
        if self.targets.get(with_seq) is None:
            batch = self.add("Shape", [x], {"start": 0, "end": 1}, "batch")
            parts = [batch]
            if with_seq:
                parts.append(self.add("Shape", [x], {"start": 2, "end": 3}, "seq"))
            ones = gs.Constant(self.graph_unique("ones"), np.ones(3 - len(parts), np.int64))
            self.targets[with_seq] = self.add("Concat", [*parts, ones], {"axis": 0}, "expand_shape")
        out = self.add("Expand", [cache, self.targets[with_seq]], name="cache_batch")
        self.batch[key] = out
        return out


def _needs_batch_expand(cache: gs.Tensor, x: gs.Tensor) -> bool:
    cshape, xshape = getattr(cache, "shape", None), getattr(x, "shape", None)
    if cshape and xshape and len(cshape) == 3:
        b, xb = cshape[0], xshape[0]
        return not (b == xb and not (isinstance(b, int) and b == 1 and xb != 1))
    return True


def _repair(graph: gs.Graph, ctx: PassContext, builder: _CacheBuilder) -> None:
    for node in [n for n in graph.nodes if n.op == "RotaryEmbedding"]:
        has_positions = len(node.inputs) > 3 and node.inputs[3] is not None and node.inputs[3].name
        if has_positions:
            continue
        x, cos, sin = node.inputs[:3]
        if rank(cos) not in (None, 3) or rank(sin) not in (None, 3):
            ctx.report.decline(node.name, f"3-D cache expected without position_ids, got rank {rank(cos)}")
            continue
        if not (_needs_batch_expand(cos, x) or _needs_batch_expand(sin, x)):
            continue
        if producer(cos, "Expand") is not None and producer(sin, "Expand") is not None:
            continue   # already broadcast explicitly (e.g. repaired by an earlier run)
        node.inputs[1] = builder.for_batch_of(cos, x)
        node.inputs[2] = builder.for_batch_of(sin, x)
        ctx.report.match(node.name, repaired="cos/sin cache expanded to the input batch")


def fuse_rotary(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    builder: list[_CacheBuilder] = []

    def repair_first(g: gs.Graph) -> None:   # the exporter's own RotaryEmbedding nodes, batch-1 caches
        builder.append(_CacheBuilder(g))
        _repair(g, ctx, builder[0])

    def rewrite(g: gs.Graph, neg: gs.Node, m: RotaryMatch) -> tuple[str, dict]:
        return _rewrite(g, neg, m, builder[0])

    return run_fusion(graph, ctx, opset=OPSET, candidates=lambda g: [n for n in g.nodes if n.op == "Neg"],
                      match=_match, rewrite=rewrite, before_rewrite=repair_first,
                      # a Neg of anything but a Slice is no rotary candidate: not worth a decline line
                      reported=lambda neg: producer(neg.inputs[0], "Slice") is not None)


def _rewrite(graph: gs.Graph, neg: gs.Node, m: RotaryMatch, builder: "_CacheBuilder") -> tuple[str, dict]:
    head = _head_size(m.x)
    name = f"{neg.name or m.output.name}/RotaryEmbedding"
    x_in, out, layout = m.x, m.output, None
    caches = []
    for t in (m.cos, m.sin):
        source, layout, halved = _cache_source(t, m.mode, head)
        half = source if halved else builder.halve(source, m.mode, head)
        assert half is not None, "_duplicated and _CacheBuilder.halve disagree"
        caches.append(half)
    if layout == "bsnh":   # the op wants heads before sequence: transpose in and back out
        x_in = builder.add("Transpose", [m.x], {"perm": [0, 2, 1, 3]}, "to_bnsh")
        out = gs.Variable(builder.graph_unique("rotated"), dtype=m.output.dtype)
        graph.nodes.append(gs.Node("Transpose", name=builder.graph_unique("to_bsnh"),
                                   attrs={"perm": [0, 2, 1, 3]}, inputs=[out], outputs=[m.output]))
    caches = [builder.for_batch_of(c, x_in, with_seq=True) for c in caches]
    graph.nodes.append(gs.Node("RotaryEmbedding", name=name, attrs={"interleaved": int(m.mode == "interleaved")},
                               inputs=[x_in, *caches], outputs=[out]))
    return name, {"mode": m.mode, "layout": layout, "head_size": head}
