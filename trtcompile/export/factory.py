"""`path/to/file.py:factory` as the source: factory() returns (module, example_inputs).

example_inputs is a dict of named tensors (their names become the ONNX input names) or a tuple
(named input_0, input_1, ...). Outputs are named output_0, ... unless the module returns a dict.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from trtcompile.errors import UserError
from trtcompile.export.source import Source, hash_files


def load_factory_source(spec: str) -> Source:
    file, _, func = spec.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise UserError(f"factory file {file!r} does not exist", hint="pass path/to/file.py:function_name")
    import torch

    module_name = f"trtcompile_factory_{abs(hash(str(path.resolve())))}"
    spec_obj = importlib.util.spec_from_file_location(module_name, path)
    mod = importlib.util.module_from_spec(spec_obj)
    sys.modules[module_name] = mod
    try:
        spec_obj.loader.exec_module(mod)
    except Exception as exc:
        raise UserError(f"importing {file!r} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(mod, func, None)
    if not callable(factory):
        raise UserError(f"{file!r} has no function {func!r}",
                        hint=f"define `def {func}(): return module, example_inputs` in {file}")
    result = factory()
    if not (isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module)):
        raise UserError(f"{spec!r} must return (torch.nn.Module, example_inputs), got {type(result).__name__}")
    module, examples = result
    if isinstance(examples, torch.Tensor):
        examples = (examples,)
    if isinstance(examples, (tuple, list)):
        examples = {f"input_{i}": t for i, t in enumerate(examples)}
    if not isinstance(examples, dict) or not all(isinstance(t, torch.Tensor) for t in examples.values()):
        raise UserError(f"{spec!r}: example_inputs must be a dict of named tensors or a tuple of tensors")

    names = list(examples)
    wrapper = _make_wrapper_class()(module.eval(), names, positional=not _takes_kwargs(module, names))
    with torch.inference_mode():
        outs = wrapper(**examples)
    output_names = wrapper.output_keys or [f"output_{i}" for i in range(len(outs))]
    ranges = {n: (int(t.min()), int(t.max()) + 1) for n, t in examples.items()
              if not t.is_floating_point() and t.numel()}
    return Source(kind="factory", spec=spec, name=path.stem, task="custom", input_names=names,
                  output_names=output_names, example_inputs=examples, module=wrapper, value_ranges=ranges,
                  sha256=hash_files([path]))


def _takes_kwargs(module, names) -> bool:
    import inspect

    params = inspect.signature(module.forward).parameters
    return all(n in params for n in names)


def _make_wrapper_class():
    import torch

    class Wrapper(torch.nn.Module):
        """Keyword inputs in, a flat tuple of tensors out (dict outputs keep their keys as names)."""

        def __init__(self, inner, names, positional):
            super().__init__()
            self.inner, self.names, self.positional = inner, names, positional
            self.output_keys = None

        def forward(self, **inputs):
            if self.positional:
                out = self.inner(*[inputs[n] for n in self.names])
            else:
                out = self.inner(**inputs)
            if isinstance(out, dict):
                self.output_keys = list(out)
                return tuple(out.values())
            if hasattr(out, "to_tuple"):
                return out.to_tuple()
            return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    return Wrapper

