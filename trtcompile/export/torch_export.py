"""torch -> ONNX with named inputs/outputs and the profile's dynamic axes.

The dynamo exporter is the default. At opset 23 it already emits ONNX `Attention` for SDPA;
opset 17 is broken in dynamo (environment.md), so the floor is 18. The legacy TorchScript exporter
stays available for models dynamo cannot trace; it caps at opset 20.
"""

from __future__ import annotations

import io
import logging
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import onnx

from trtcompile.errors import UserError
from trtcompile.export.source import Source
from trtcompile.settings import ExportSettings

MIN_DYNAMO_OPSET = 18
MAX_LEGACY_OPSET = 20


def export_module(source: Source, shapes: dict[str, list], settings: ExportSettings,
                  weights_dir: "Path | None" = None) -> onnx.ModelProto:
    """The module as ONNX. With `weights_dir`, the weights are written there as external data,
    tensor by tensor from PyTorch's own buffers, and the model returned is lazy (lazy_weights.py): the
    whole model is never one protobuf in memory next to PyTorch's weights."""
    import torch

    if settings.dynamo and settings.opset < MIN_DYNAMO_OPSET:
        raise UserError(f"--opset {settings.opset} is below {MIN_DYNAMO_OPSET}, where the dynamo exporter emits "
                        f"invalid graphs", hint=f"use --opset {MIN_DYNAMO_OPSET} or higher (23 is the default)")
    if not settings.dynamo and settings.opset > MAX_LEGACY_OPSET:
        raise UserError(f"--opset {settings.opset} is above {MAX_LEGACY_OPSET}, the legacy exporter's maximum",
                        hint=f"use --opset {MAX_LEGACY_OPSET} with --legacy-exporter, or drop --legacy-exporter")
    if source.onnx_translations and not settings.dynamo:
        raise UserError(f"{source.spec!r} needs the dynamo exporter (its static KV cache exports as an opset-"
                        f"{source.min_opset} TensorScatter, which the legacy exporter cannot emit)",
                        hint="drop --legacy-exporter, or pass --kv-cache concat with it")
    examples = source.example_inputs
    axes = {name: {axis: _axis_name(dim) for axis, dim in enumerate(shape) if isinstance(dim, str)}
            for name, shape in shapes.items()}
    log = io.StringIO()
    try:
        with warnings.catch_warnings(), redirect_stdout(log), redirect_stderr(log):
            warnings.simplefilter("ignore")
            logging.getLogger("torch").setLevel(logging.ERROR)
            if settings.dynamo:
                program = torch.onnx.export(
                    _Positional(source.module, source.input_names), tuple(examples[n] for n in source.input_names),
                    dynamo=True, opset_version=max(settings.opset, source.min_opset),
                    custom_translation_table=source.onnx_translations or None,
                    input_names=source.input_names, output_names=source.output_names,
                    dynamic_shapes=tuple(axes[n] or None for n in source.input_names),
                    optimize=False, external_data=False, verbose=False,
                )
                if settings.exporter_optimize:
                    optimize_exported(program.model)
                model = program.model_proto if weights_dir is None else _save_lazy(program, weights_dir)
                _drop_weights(program.model)
                _forget_trace()
            else:
                buffer = io.BytesIO()
                torch.onnx.export(
                    _Positional(source.module, source.input_names), tuple(examples[n] for n in source.input_names),
                    buffer, dynamo=False, opset_version=settings.opset, input_names=source.input_names,
                    output_names=source.output_names, dynamic_axes={n: a for n, a in axes.items() if a},
                    do_constant_folding=True,
                )
                model = onnx.load_from_string(buffer.getvalue())
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        other = "--legacy-exporter" if settings.dynamo else "the default dynamo exporter"
        raise UserError(f"exporting {source.spec!r} to ONNX failed: {type(exc).__name__}: {detail}",
                        hint=f"check the model runs on the example inputs; or try {other}") from exc
    rename_dims(model, shapes)
    return model


def _save_lazy(program, weights_dir: Path) -> onnx.ModelProto:
    from trtcompile.lazy_weights import load_lazy

    path = Path(weights_dir) / "exported.onnx"
    program.save(str(path), external_data=True)
    return load_lazy(path)


def _drop_weights(ir_model) -> None:
    """Unlink the exported IR from PyTorch's weights once the ONNX model is out.

    After onnxscript's optimizer has run, the IR graph outlives the export (its module-level
    rewrite rules keep the last graph they matched, and the graph's input list keeps a counter of
    every value ever registered), and with it every weight a value holds: `Source.release()` after
    the reference outputs would then free nothing (211 MiB of a 211 MiB checkpoint stayed mapped).
    Values the IR no longer lists are only found through the collector.
    """
    import gc

    import onnx_ir as ir

    ir_model.graph.initializers.clear()
    for obj in gc.get_objects():  # PyTorch's tensors, and numpy views of them the optimizer made
        if isinstance(obj, ir.Value) and obj.const_value is not None and obj.const_value.size >= 1024:
            obj.const_value = None


def _forget_trace() -> None:
    """Let the traced FX graph go once the ONNX model is out.

    torch.export's make_fx tracer leaves a module-level map from fake tensors to the graph's nodes
    (proxy_tensor._FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT), cleared only when the next trace
    starts; until then it keeps the whole traced graph, its fake tensors and their shape
    environment alive through every later stage of a compile."""
    from torch.fx.experimental import proxy_tensor

    getattr(proxy_tensor, "_FAKE_TENSOR_ID_TO_PROXY_MAP_FOR_EXPORT", {}).clear()


def optimize_exported(model) -> None:
    """The dynamo exporter's own optimizer minus onnxscript's ~40 generic rewrite rules: constant
    folding (never through a large initializer that several nodes read, a tied embedding: that
    would store a second copy of it, passes/fold_constants.py), cleanup, and the opset-23 fusions.

    The generic rules were about half of SmolLM2's export (every rule tried at every node, twice)
    and rewrote nothing the passes need: the one thing they did for us, removing the full-range
    Slices around HF's repeat_kv, fuse_attention now looks through itself (patterns.skip_no_ops),
    so Attention still reads un-expanded K/V (native GQA).
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    import onnxscript.rewriter.onnx_fusions
    from onnxscript.optimizer import _constant_folding

    from trtcompile.passes.fold_constants import SHARED_WEIGHT_MIN_ELEMENTS

    def reads_shared_weight(node):
        for value in node.inputs:
            if (value is not None and value.is_initializer() and len(value.uses()) > 1
                    and value.const_value is not None and value.const_value.size >= SHARED_WEIGHT_MIN_ELEMENTS):
                return False
        return None  # onnxscript's default rules decide

    # optimize_ir's passes in its order, without rewriter.RewritePass(_DEFAULT_REWRITE_RULES).
    ir.passes.Sequential(
        common.InlinePass(),
        ir.passes.PassManager([
            _constant_folding.FoldConstantsPass(
                shape_inference=True, input_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_INPUT_SIZE_LIMIT,
                output_size_limit=_constant_folding.DEFAULT_CONSTANT_FOLD_OUTPUT_SIZE_LIMIT,
                should_fold=reads_shared_weight),
            common.RemoveUnusedNodesPass(), common.RemoveUnusedFunctionsPass(), common.RemoveUnusedOpsetsPass(),
        ], steps=2, early_stop=True),
        common.RemoveUnusedNodesPass(),
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common.LiftSubgraphInitializersToMainGraphPass(),
        common.DeduplicateInitializersPass(),
        common.CommonSubexpressionEliminationPass(),
        common.OutputFixPass(),
        common.NameFixPass(),
    )(model)
    onnxscript.rewriter.onnx_fusions.fuse(model)


def _axis_name(dim: str) -> str:
    # A sum such as past_sequence+sequence is its own dynamic axis to the exporter; rename_dims
    # writes the symbolic sum back afterwards.
    return dim.replace("+", "_plus_")


def rename_dims(model: onnx.ModelProto, shapes: dict[str, list]) -> None:
    """Write the profile's dimension names onto inputs, and onto outputs that share a symbol."""
    mapping: dict[str, str] = {}
    for inp in model.graph.input:
        if inp.name not in shapes:
            continue
        for dim, want in zip(inp.type.tensor_type.shape.dim, shapes[inp.name]):
            if isinstance(want, str):
                if dim.dim_param:
                    mapping.setdefault(dim.dim_param, want)
                dim.ClearField("dim_value")
                dim.dim_param = want
    for value in list(model.graph.output) + list(model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in mapping:
                dim.dim_param = mapping[dim.dim_param]
            elif "+" in dim.dim_param:  # the exporter writes sums as "sequence + past_sequence"
                dim.dim_param = dim.dim_param.replace(" ", "")


def _Positional(inner, names: list[str]):
    """A module whose forward takes the inputs positionally, with an explicit signature.

    torch.export maps dynamic_shapes onto forward's parameters, so `**kwargs` and names such as
    `past_key_values.0.key` (not identifiers) cannot be used directly; ONNX names come from input_names.
    """
    import torch

    params = ", ".join(f"x{i}" for i in range(len(names)))
    body = ", ".join(f"{name!r}: x{i}" for i, name in enumerate(names))
    namespace: dict = {}
    exec(f"def forward(self, {params}):\n    return self.inner(**{{{body}}})\n", namespace)
    cls = type("Positional", (torch.nn.Module,), {"forward": namespace["forward"]})
    module = cls()
    module.inner = inner
    return module
