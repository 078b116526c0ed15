"""Remove Casts to the type their input already has.

The legacy exporter writes `x.to(torch.float32)` on an fp32 tensor (HF norms upcast
unconditionally) and int64 -> int64 casts in index arithmetic as real Cast nodes: 5 to 12 per
tiny legacy model, none in dynamo exports (measured on BERT/GPT-2/Llama/Mistral/Qwen2/Phi-3/
Gemma/GPT-J). Each is a copy kernel in ONNX Runtime and a node every later matcher must see
through. Only exact no-ops go: a cast that narrows or widens (fp32 -> fp16, int -> float) is
meaning and stays, and so does a Cast whose output is a graph output (the name is the interface).

```
  x:float32 ── Cast(to=FLOAT) ── y   =>   x ── (readers of y)
```
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx.helper import tensor_dtype_to_np_dtype

from trtcompile.graph.context import PassContext


def _same_type(node: gs.Node) -> bool:
    source = node.inputs[0].dtype
    if source is None:
        return False
    try:
        return np.dtype(source) == np.dtype(tensor_dtype_to_np_dtype(int(node.attrs["to"])))
    except TypeError:  # bfloat16/float8 have no numpy dtype
        return False


def simplify_casts(graph: gs.Graph, ctx: PassContext) -> gs.Graph:
    outputs = {id(t) for t in graph.outputs}
    for node in [n for n in graph.nodes if n.op == "Cast"]:
        if not _same_type(node):
            continue
        source, result = node.inputs[0], node.outputs[0]
        if id(result) in outputs:
            ctx.report.decline(node.name, "no-op Cast writes a graph output; its name is kept")
            continue
        for reader in list(result.outputs):
            for i, t in enumerate(reader.inputs):
                if t is result:
                    reader.inputs[i] = source
        node.outputs.clear()
        ctx.report.match(node.name, dtype=str(np.dtype(source.dtype)))
    return graph.cleanup(remove_unused_graph_inputs=False).toposort()
