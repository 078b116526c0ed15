"""An existing ONNX file as the source: export is skipped, the file itself is the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trtcompile.errors import UserError
from trtcompile.export.source import Source, hash_files



def load_onnx_source(path: Path) -> Source:
    from trtcompile.onnx_io import ONNX_DTYPE_NAMES, load_model

    model = load_model(path, load_weights=False)
    init = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in init]
    examples = {}
    shapes = {}
    for inp in inputs:
        tt = inp.type.tensor_type
        if tt.elem_type not in ONNX_DTYPE_NAMES:
            raise UserError(f"{str(path)!r}: input {inp.name!r} has an unsupported element type {tt.elem_type}")
        shape = [d.dim_param if d.dim_param else (d.dim_value if d.HasField("dim_value") else "?")
                 for d in tt.shape.dim]
        shapes[inp.name] = shape
        # A tiny example of the right rank and dtype; the profile supplies real sizes.
        examples[inp.name] = np.zeros([s if isinstance(s, int) else 1 for s in shape], ONNX_DTYPE_NAMES[tt.elem_type])
    from trtcompile.export.limits import onnx_position_limits

    return Source(
        axis_limits=onnx_position_limits(model, [i.name for i in inputs]),
        kind="onnx", spec=str(path), name=path.stem, task="custom",
        input_names=[i.name for i in inputs], output_names=[o.name for o in model.graph.output],
        example_inputs=examples, onnx_path=path, known_shapes=shapes,
        sha256=hash_files([path] + [p for p in path.parent.glob(path.name + ".data")]),
    )
