"""Static KV cache: when attention reads every slot, read the cache tensor itself, not a copy.

The static cache's attention reads the first kv_sequence slots of each layer's cache (export/kv_cache.py),
a Slice along the sequence axis of [batch, kv_heads, max_cache, head_dim]. That prefix is not
contiguous (every head has max_cache slots), and ONNX Runtime's Slice always writes a new tensor: at
long contexts each decode step copies the whole cache once more before Attention reads it again
(`trtcompile bench decode` on SmolLM2, 30 layers, context 2048: the Slice copies cost about as much
as the Attention kernels). Reading all max_cache slots in place costs Attention a little more work
than the prefix and saves the copy; for short contexts the prefix is far cheaper. So both reads
stay, behind one `If` per layer on kv_sequence == max_cache, and the runtime (runtime/static_cache.py
`kv_length`) asks for the whole cache once the context passes half of it (70% with an FP16 cache):

```
  present.i.key ── Slice(0:kv_sequence, axis 2) ── [Cast] ──┐
  present.i.value ─ Slice(0:kv_sequence, axis 2) ── [Cast] ──┼── Attention(q, k, v, mask) ── y
  q, mask ──────────────────────────────────────────────────┘
  =>
  If(kv_sequence == max_cache)
     then: Attention(q, [Cast] present.i.key, [Cast] present.i.value, mask)     (no copy)
     else: the Slices, [Casts] and Attention above
```

Both branches are the same standard Attention (no past inputs, one output, the explicit mask, no
is_causal). Runs after precision conversion, last, so no other pass needs to look inside the branches.

The `If` is an ONNX Runtime CPU measure (its Slice always copies). TensorRT does not get it: the
engine build parses the graph with each such `If` replaced by its else branch
(`inline_prefix_reads`, build/tensorrt_graph.py), the prefix read alone, which is correct for every
kv_sequence up to max_cache. So TensorRT's importer never sees an IAttention inside an
IIfConditional (unverified here: no TensorRT), and an engine pays no conditional per layer.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtcompile.graph.context import PassContext
from trtcompile.passes._match import const_value, producer

OPSET = 24  # the static cache's opset; If itself is older
IF_SUFFIX = "_cache_read"  # the If's name: the Attention's name plus this
CONDITION_PREFIX = "kv_read_whole_cache_"  # the Equal/Squeeze (and their constants) computing its condition


def _cache_read(tensor: gs.Tensor):
    """(cache tensor, slice node, cast node or None, kv_sequence end tensor) when `tensor` is
    [Cast](Slice(cache, 0, end, axis 2)) of a static cache output, else a reason (str)."""
    cast = producer(tensor, "Cast")
    node = producer(cast.inputs[0] if cast is not None else tensor, "Slice")
    if node is None:
        return "K/V do not come from a Slice of the cache"
    cache = node.inputs[0]
    if producer(cache, "TensorScatter") is None:
        return f"the sliced tensor {cache.name!r} is not a TensorScatter cache update"
    starts, axes = const_value(node.inputs[1]), const_value(node.inputs[3]) if len(node.inputs) > 3 else None
    steps = const_value(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else np.ones(1)
    if starts is None or axes is None or steps is None or starts.size != 1 or int(starts.reshape(-1)[0]) != 0 \
            or axes.size != 1 or int(axes.reshape(-1)[0]) % 4 != 2 or int(steps.reshape(-1)[0]) != 1:
        return f"{node.name} is not a prefix slice [0:end] along the sequence axis"
    shape = cache.shape
    if not shape or len(shape) != 4 or not isinstance(shape[2], int):
        return f"the cache {cache.name!r} has no static length (shape {shape})"
    for inner in (node, cast):
        if inner is not None and len(inner.outputs[0].outputs) != 1:
            return f"{inner.outputs[0].name!r} is used outside the attention"
    return cache, node, cast, node.inputs[2]


def _full_length(graph: gs.Graph, end: gs.Tensor, max_cache: int, memo: dict) -> gs.Tensor:
    """The bool scalar `end == max_cache`, built once per (end tensor, length)."""
    key = (end.name, max_cache)
    if key not in memo:
        name = f"{CONDITION_PREFIX}{max_cache}"
        equal = gs.Variable(f"{name}_1d", dtype=np.bool_, shape=[1])
        cond = gs.Variable(name, dtype=np.bool_, shape=[])
        graph.nodes.append(gs.Node("Equal", name=f"{name}_equal",
                                   inputs=[end, gs.Constant(f"{name}_length", np.array([max_cache], np.int64))],
                                   outputs=[equal]))
        graph.nodes.append(gs.Node("Squeeze", name=f"{name}_squeeze",
                                   inputs=[equal, gs.Constant(f"{name}_axes", np.array([0], np.int64))],
                                   outputs=[cond]))
        memo[key] = cond
    return memo[key]


def read_cache_in_place(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    if not any(n.op == "TensorScatter" for n in graph.nodes):
        ctx.report.note("no static KV cache (TensorScatter): nothing to do")
        return graph
    memo: dict = {}
    for attention in [n for n in graph.nodes if n.op == "Attention"]:
        reads = [_cache_read(attention.inputs[i]) for i in (1, 2)]
        reason = next((r for r in reads if isinstance(r, str)), None)
        if reason is None and reads[0][3] is not reads[1][3]:
            reason = "K and V are sliced to different lengths"
        if reason is None and reads[0][0].shape[2] != reads[1][0].shape[2]:
            reason = "K and V caches differ in length"
        if reason is not None:
            ctx.report.decline(attention.name, reason)
            continue
        max_cache = int(reads[0][0].shape[2])
        cond = _full_length(graph, reads[0][3], max_cache, memo)
        out = attention.outputs[0]
        dtype = out.dtype if out.dtype is not None else np.float32

        # else: the original nodes, moved into the branch as they are.
        sliced = [n for read in reads for n in (read[1], read[2]) if n is not None]
        else_out = gs.Variable(f"{out.name}_sliced", dtype=dtype)
        for n in sliced:
            graph.nodes.remove(n)
        graph.nodes.remove(attention)
        attention.outputs.clear()  # unhooks `out` from its producer, so the If can produce it
        attention.outputs.append(else_out)
        else_branch = gs.Graph(nodes=[*sliced, attention], outputs=[else_out], name=f"{attention.name}_sliced")

        # then: the same Attention on the whole cache (cast like the slice was, where it was).
        then_nodes, kv = [], []
        for read in reads:
            cache, _, cast, _ = read
            if cast is None:
                kv.append(cache)
                continue
            whole = gs.Variable(f"{cast.outputs[0].name}_whole", dtype=cast.outputs[0].dtype)
            then_nodes.append(gs.Node("Cast", name=f"{cast.name}_whole", attrs=dict(cast.attrs),
                                      inputs=[cache], outputs=[whole]))
            kv.append(whole)
        then_out = gs.Variable(f"{out.name}_whole", dtype=dtype)
        then_nodes.append(gs.Node("Attention", name=f"{attention.name}_whole", attrs=dict(attention.attrs),
                                  inputs=[attention.inputs[0], *kv, *attention.inputs[3:]], outputs=[then_out]))
        then_branch = gs.Graph(nodes=then_nodes, outputs=[then_out], name=f"{attention.name}_whole")

        graph.nodes.append(gs.Node("If", name=f"{attention.name}{IF_SUFFIX}", inputs=[cond], outputs=[out],
                                   attrs={"then_branch": then_branch, "else_branch": else_branch}))
        ctx.report.match(attention.name, max_cache=max_cache, cast=reads[0][2] is not None)
    return graph


def inline_prefix_reads(model: onnx.ModelProto) -> int:
    """Undo the pass in `model` (in place, weights untouched): each cache-read `If` becomes its else
    branch, the prefix Slices and the Attention, and the conditions no node reads any more go.
    Returns how many were inlined. Works on the proto, so a model loaded without its external
    data (an 8B model's graph, not its weights) is rewritten as it stands."""
    graph = model.graph
    known = {t.name for t in graph.initializer}
    nodes, inlined = [], 0
    for node in graph.node:
        branch = next((a.g for a in node.attribute if a.name == "else_branch"), None)
        if node.op_type != "If" or not node.name.endswith(IF_SUFFIX) or branch is None \
                or not branch.node or branch.node[-1].op_type != "Attention" or len(branch.output) != 1:
            nodes.append(node)
            continue
        for inner in branch.node:
            moved = onnx.NodeProto()
            moved.CopyFrom(inner)
            for i, name in enumerate(moved.output):
                if name == branch.output[0].name:
                    moved.output[i] = node.output[0]
            nodes.append(moved)
        for tensor in branch.initializer:  # constants the branch holds (outer names: the same values)
            if tensor.name not in known:
                graph.initializer.append(tensor)
                known.add(tensor.name)
        graph.value_info.extend(v for v in branch.value_info if v.name != branch.output[0].name)
        inlined += 1
    while True:  # the Squeeze goes first, then the Equal that fed it
        read = {name for n in nodes for name in n.input} | {o.name for o in graph.output}
        dead = {id(n) for n in nodes if n.name.startswith(CONDITION_PREFIX) and not read.intersection(n.output)}
        if not dead:
            break
        nodes = [n for n in nodes if id(n) not in dead]
    del graph.node[:]
    graph.node.extend(nodes)
    unused = [t for t in graph.initializer if t.name.startswith(CONDITION_PREFIX) and t.name not in read]
    for tensor in unused:
        graph.initializer.remove(tensor)
    return inlined
