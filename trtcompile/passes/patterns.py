"""Small matching utilities shared by the fusion passes (no pass lives here).

What every matcher needs and onnx-graphsurgeon does not give directly: the one producer or the
one consumer of a tensor, the value of a constant (initializer or `Constant` node), shapes for
graphs that come without `value_info`, the symbolic value of a shape tensor (the exporters build
Reshape/Expand targets from Shape -> Slice/Gather -> Concat chains), and a safe opset bump.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtcompile.passes._match import const_value, producer

def only_consumer(tensor: gs.Tensor, graph: gs.Graph) -> gs.Node | None:
    """The single node reading `tensor`, or None if several read it or it is a graph output."""
    if len(tensor.outputs) != 1 or tensor in graph.outputs:
        return None
    return tensor.outputs[0]


def dims_equal(a, b) -> bool:
    """Two dims are known equal: same int, or the same symbolic name."""
    return a is not None and b is not None and a == b


def shape_value(tensor: gs.Tensor, depth: int = 12) -> list | None:
    """The value of a 1-D shape tensor as ints and symbolic names, or None if it is not knowable.

    Follows Constant, Shape, Slice, Gather, Concat, Unsqueeze, Squeeze, Cast, Identity; a dim that
    shape inference left unknown becomes a name unique to its tensor and axis, so it still
    compares equal to itself wherever the same Shape output is used.
    """
    value = const_value(tensor)
    if value is not None:
        return [int(v) for v in np.atleast_1d(value).ravel()]
    node = producer(tensor)
    if node is None or depth == 0:
        return None
    if node.op == "Shape":
        src = node.inputs[0]
        if src.shape is None:
            return None
        dims = [d if isinstance(d, int) else (d if isinstance(d, str) and d else f"?{src.name}:{i}")
                for i, d in enumerate(src.shape)]
        start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
        return dims[start:end]
    if node.op in ("Cast", "Identity", "Unsqueeze", "Squeeze"):
        return shape_value(node.inputs[0], depth - 1)
    if node.op == "Concat":
        parts = [shape_value(t, depth - 1) for t in node.inputs]
        return None if any(p is None for p in parts) else list(itertools.chain(*parts))
    if node.op == "Gather":
        data, idx = shape_value(node.inputs[0], depth - 1), const_value(node.inputs[1])
        if data is None or idx is None or node.attrs.get("axis", 0) != 0:
            return None
        try:
            return [data[int(i)] for i in np.atleast_1d(idx).ravel()]
        except IndexError:
            return None
    if node.op == "Slice":
        data = shape_value(node.inputs[0], depth - 1)
        vals = [const_value(t) if t is not None and t.name else None for t in node.inputs[1:]]
        if data is None or vals[0] is None or vals[1] is None:
            return None
        if len(vals) > 2 and vals[2] is not None and int(np.ravel(vals[2])[0]) not in (0, -1):
            return None
        step = int(np.ravel(vals[3])[0]) if len(vals) > 3 and vals[3] is not None else 1
        start, end = int(np.ravel(vals[0])[0]), int(np.ravel(vals[1])[0])
        n = len(data)
        start, end = max(min(start, n), -n - 1), max(min(end, n), -n - 1)
        return data[slice(start, end, step)]
    return None


def sym_dims(t: gs.Tensor) -> list | None:
    """Shape with unknown dims named like `shape_value` names them (so the two compare)."""
    if t.shape is None:
        return None
    return [d if isinstance(d, int) or (isinstance(d, str) and d) else f"?{t.name}:{i}"
            for i, d in enumerate(t.shape)]


def repeat_kv_source(t: gs.Tensor, probe: "ShapeProbe | None" = None) -> tuple[gs.Tensor, int]:
    """HF repeat_kv: Kkv [B,Nkv,S,H] -> Unsqueeze(2) -> Expand [B,Nkv,n,S,H] -> Reshape [B,Nkv*n,S,H].

    Returns (Kkv, n) when `t` is provably that expansion (head i reads KV head i // n, the
    grouping ONNX Attention uses), else (t, 1). Symbolic shapes first; `probe` where they fail.
    Identity and full-range Slices between the steps are looked through (`skip_no_ops`): the
    dynamo exporter's graph keeps `[:, :, None, :, :]` as Slices until a generic rewrite removes
    them, and export does not run onnxscript's generic rewrites (torch_export.py)."""
    found = _repeat_kv_symbolic(t)
    if found[1] == 1 and probe is not None and producer(t, "Reshape") is not None:
        expand = producer(skip_no_ops(producer(t).inputs[0]), "Expand")
        unsq = producer(skip_no_ops(expand.inputs[0]), "Unsqueeze") if expand is not None else None
        axes = None if unsq is None else (const_value(unsq.inputs[1]) if len(unsq.inputs) > 1
                                          else np.asarray(unsq.attrs.get("axes", [])))
        if axes is not None and [int(a) for a in np.ravel(axes)] in ([2], [-3]):
            found = _repeat_kv_by_probe(t, skip_no_ops(unsq.inputs[0]), expand, probe)
    return found


# A Slice end at least this large means "to the end" (torch writes INT64_MAX for `:`).
_SLICE_TO_END = 2**31 - 1


def skip_no_ops(t: gs.Tensor, limit: int = 8) -> gs.Tensor:
    """`t` before any Identity and full-range Slice (start 0, end to the end, step 1) producing it."""
    for _ in range(limit):
        node = producer(t, "Identity", "Slice")
        if node is None or (node.op == "Slice" and not _full_range_slice(node)):
            return t
        t = node.inputs[0]
    return t


def _full_range_slice(node: gs.Node) -> bool:
    if len(node.inputs) < 3:  # opset < 10 Slice keeps starts/ends in attributes; never seen here
        return False
    starts, ends = const_value(node.inputs[1]), const_value(node.inputs[2])
    steps = const_value(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else np.ones(1)
    if starts is None or ends is None or steps is None:
        return False
    return bool(np.all(np.ravel(starts) == 0) and np.all(np.ravel(ends) >= _SLICE_TO_END)
                and np.all(np.ravel(steps) == 1))


def _repeat_kv_symbolic(t: gs.Tensor) -> tuple[gs.Tensor, int]:
    reshape = producer(t, "Reshape")
    expand = producer(skip_no_ops(reshape.inputs[0]), "Expand") if reshape is not None else None
    unsq = producer(skip_no_ops(expand.inputs[0]), "Unsqueeze") if expand is not None else None
    if unsq is None:
        return t, 1
    axes = const_value(unsq.inputs[1]) if len(unsq.inputs) > 1 else np.asarray(unsq.attrs.get("axes", []))
    src = skip_no_ops(unsq.inputs[0])
    dims = sym_dims(src)
    if axes is None or [int(a) for a in np.ravel(axes)] not in ([2], [-3]) or dims is None or len(dims) != 4:
        return t, 1
    if not isinstance(dims[1], int):
        return t, 1
    target = shape_value(expand.inputs[1])
    out = sym_dims(expand.outputs[0])
    n_rep = None
    if target is not None and len(target) == 5 and isinstance(target[2], int):
        if all(target[i] in (1, dims[j]) for i, j in ((0, 0), (1, 1), (3, 2), (4, 3))):
            n_rep = target[2]
    elif out is not None and len(out) == 5 and isinstance(out[2], int):
        if all(out[i] == dims[j] for i, j in ((0, 0), (1, 1), (3, 2), (4, 3))):
            n_rep = out[2]
    if n_rep is None:
        return t, 1
    new = shape_value(reshape.inputs[1])
    zero_copies = not reshape.attrs.get("allowzero", 0)
    want = [dims[0], dims[1] * n_rep, dims[2], dims[3]]
    if new is None:
        # A target built with arithmetic (past + new length): trust the exporter's inferred shape.
        return (src, n_rep) if sym_dims(t) == want and t.shape is not None and None not in t.shape else (t, 1)
    if len(new) != 4 or sum(d == -1 for d in new) > 1:
        return t, 1
    for i, (got, exp) in enumerate(zip(new, want)):
        if got == exp or got == -1 or (got == 0 and zero_copies and i != 1):
            continue
        return t, 1
    if new[1] == -1 and not all(new[i] == want[i] for i in (0, 2, 3)):
        return t, 1
    return src, n_rep


def _repeat_kv_by_probe(t: gs.Tensor, src: gs.Tensor, expand: gs.Node, probe: "ShapeProbe") -> tuple[gs.Tensor, int]:
    """The legacy exporter's shapes name nothing in common (unk__37 vs unk__45) and build the
    Expand target with Where(-1 ...): check the shapes under concrete input sizes instead."""
    if probe is None:
        return t, 1
    reps = set()
    for s, e, r in probe.concrete(src, expand.outputs[0], t):
        if s is None or r is None or len(s) != 4 or len(r) != 4 or None in s or None in r or not s[1]:
            return t, 1
        if r[0] != s[0] or r[2:] != s[2:] or r[1] % s[1]:
            return t, 1
        n_rep = r[1] // s[1]
        if e is None or len(e) != 5 or e[2] not in (None, n_rep):
            return t, 1
        if any(e[i] is not None and e[i] != s[j] for i, j in ((0, 0), (1, 1), (3, 2), (4, 3))):
            return t, 1
        reps.add(n_rep)
    return (src, reps.pop()) if len(reps) == 1 and min(reps) > 1 else (t, 1)


class ShapeProbe:
    """Static dims that symbolic shape inference cannot name (e.g. a head count behind a
    Reshape(-1) in legacy exports), found by inferring shapes twice with the graph inputs' dynamic
    dims set to two different sets of sizes: a dim that is the same int in both is static.

    The two inference runs (on a copy without weights) happen at the first question, or at once
    with `now=True`: a pass that rewrites the graph as it goes must probe before its first edit.
    """

    SIZES = ((37, 41, 43, 47, 53, 59, 61, 67), (71, 73, 79, 83, 89, 97, 101, 103))

    def __init__(self, graph: gs.Graph, now: bool = False):
        self.graph = graph
        self._runs: list[dict] | None = self._infer() if now else None

    def _infer(self) -> list[dict]:
        from trtcompile.onnx_io import fix_ir_version

        # Weights only matter through their shapes: make them inputs of a copy, so nothing big
        # is serialized (graph.copy() shares, never copies, the weight arrays).
        graph = self.graph.copy()
        weights = {id(t): gs.Variable(t.name, dtype=t.dtype, shape=list(t.shape))
                   for t in graph.tensors().values()
                   if isinstance(t, gs.Constant) and int(np.prod(t.shape, dtype=np.int64)) > 64}
        for node in graph.nodes:
            for i, t in enumerate(node.inputs):
                if id(t) in weights:
                    node.inputs[i] = weights[id(t)]
        graph.inputs.extend(weights.values())
        base = fix_ir_version(gs.export_onnx(graph, do_type_check=False))
        del base.graph.value_info[:]
        runs = []
        for sizes in self.SIZES:
            model = onnx.ModelProto()
            model.CopyFrom(base)
            names: dict[str, int] = {}
            for inp in model.graph.input:
                for d in inp.type.tensor_type.shape.dim:
                    if not d.HasField("dim_value"):
                        key = d.dim_param or f"?{inp.name}"
                        d.dim_value = names.setdefault(key, sizes[len(names) % len(sizes)])
            try:
                inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
            except Exception:  # best effort: no probe means the matchers fall back to declining
                return []
            runs.append({vi.name: [d.dim_value if d.HasField("dim_value") else None
                                   for d in vi.type.tensor_type.shape.dim]
                         for vi in inferred.graph.value_info if vi.type.tensor_type.HasField("shape")})
        return runs

    def concrete(self, *tensors: gs.Tensor) -> list[tuple]:
        """Per probe run, the concrete shape of each tensor (None where unknown)."""
        if self._runs is None:
            self._runs = self._infer()
        return [tuple(run.get(t.name) for t in tensors) for run in self._runs] if self._runs else [
            tuple(None for _ in tensors)]

    def static(self, tensor: gs.Tensor) -> list | None:
        """The tensor's shape with the dims that are static (same int in every run), else None."""
        if tensor.shape is not None and all(isinstance(d, int) for d in tensor.shape):
            return list(tensor.shape)
        shapes = [s[0] for s in self.concrete(tensor)]
        if any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
            return None
        return [d if all(x[i] == d for x in shapes) else None for i, d in enumerate(shapes[0])]


def infer_missing_shapes(graph: gs.Graph) -> None:
    """Fill in shapes/dtypes where tensors have none (hand-built graphs, legacy exports run
    without `fold_shapes`): matchers check ranks and head counts."""
    if any(isinstance(t, gs.Variable) and (t.shape is None or t.dtype is None) for t in graph.tensors().values()):
        from trtcompile.passes.fold_shapes import infer_shapes

        try:
            infer_shapes(graph)
        except Exception:  # best effort: matchers then decline on unknown ranks, with a reason
            pass


class NameScope:
    """Unique node/tensor names for the nodes a pass adds (checked against the whole graph)."""

    def __init__(self, graph: gs.Graph):
        self.taken = {n.name for n in graph.nodes} | set(graph.tensors().keys())

    def __call__(self, base: str) -> str:
        name, i = base, 0
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name
