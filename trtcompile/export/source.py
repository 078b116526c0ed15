"""What the user brings, loaded: a module with named inputs and outputs, or an existing ONNX file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from trtcompile.errors import UserError

TASKS = ("encoder", "vision-encoder", "causal-lm", "sequence-classification", "token-classification",
         "question-answering", "masked-lm", "custom")


@dataclass
class Source:
    kind: str  # "hf" | "gguf" | "factory" | "onnx"
    spec: str  # what the user typed
    name: str
    task: str
    input_names: list[str]
    output_names: list[str]
    # Example inputs; for torch sources tensors, for ONNX sources numpy arrays (or empty).
    example_inputs: dict[str, Any]
    module: Any = None  # torch.nn.Module taking the inputs as keyword args, returning a tuple
    onnx_path: Path | None = None
    config: dict = field(default_factory=dict)
    tokenizer_dir: Path | None = None
    # Symbolic shapes a source knows better than a generic profile (e.g. the KV cache's).
    known_shapes: dict[str, list] = field(default_factory=dict)
    # Value ranges [low, high) for integer inputs, for generated and validated inputs.
    value_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Extra manifest sections (e.g. "generation" for causal LMs).
    manifest_extra: dict = field(default_factory=dict)
    default_profile: Callable[[], dict] | None = None
    sha256: str = ""
    # torch op -> onnxscript function for the dynamo exporter, and the lowest opset the graph needs.
    onnx_translations: dict = field(default_factory=dict)
    min_opset: int = 0
    # Re-derive shape-dependent parts (e.g. a static KV cache's length) from the profile in use.
    fit_profile: Callable[[dict], None] | None = None
    # How far input axes may go (learned position tables, trained context): export/limits.py.
    axis_limits: list = field(default_factory=list)
    # Where the weights came from when not a plain float checkpoint (e.g. a quantized GGUF file).
    weights: dict = field(default_factory=dict)

    def release(self) -> None:
        """Drop the model (PyTorch weights, or the original ONNX's session) once references are computed."""
        self.module = None
        self.example_inputs = {}
        self._ort = None
        self.fit_profile = None  # its closure holds the model too
        self.released = True

    def reference(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of the original model (PyTorch, or the original ONNX in ONNX Runtime)."""
        if getattr(self, "released", False):
            raise RuntimeError(f"the model of {self.spec!r} was released after its reference outputs were computed")
        if self.module is None:
            import onnxruntime as ort

            sess = getattr(self, "_ort", None)
            if sess is None:
                sess = self._ort = ort.InferenceSession(str(self.onnx_path), providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            return dict(zip(names, sess.run(names, feeds)))
        import torch

        with torch.inference_mode():
            outs = self.module(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
        outs = outs if isinstance(outs, (tuple, list)) else (outs,)
        return {n: o.detach().float().numpy() if o.dtype == torch.bfloat16 else o.detach().numpy()
                for n, o in zip(self.output_names, outs)}


def hash_files(paths: list[Path]) -> str:
    """sha256 over the given files (names and contents), for the manifest's source hash."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load_source(spec: "str | Path", settings=None, *, trust_remote_code: bool = False) -> Source:
    """A Hugging Face checkpoint directory, a `.gguf` file, `file.py:factory`, or an `.onnx` file.

    `settings` (ExportSettings) chooses the causal-LM wrapper (KV-cache form and dtype, logits).
    trust_remote_code: run the Python a checkpoint ships (config.json `auto_map`); off by default.
    """
    spec = str(spec)
    path = Path(spec)
    if spec.endswith(".gguf"):
        from trtcompile.export.gguf import load_gguf_source

        return load_gguf_source(path, settings)
    if spec.endswith(".onnx"):
        from trtcompile.export.onnx_file import load_onnx_source

        return load_onnx_source(path)
    if ".py:" in spec:
        from trtcompile.export.factory import load_factory_source

        return load_factory_source(spec)
    if path.is_dir():
        from trtcompile.export.hf import load_hf_source

        return load_hf_source(path, settings, trust_remote_code=trust_remote_code)
    if path.exists():
        raise UserError(f"model {spec!r} is neither a checkpoint directory, a .gguf or .onnx file nor "
                        f"file.py:factory", hint="pass a Hugging Face checkpoint directory (with config.json), "
                                                 "path/to/model.gguf, path/to/model.onnx, or path/to/file.py:factory")
    raise UserError(f"model {spec!r} does not exist",
                    hint="pass a local Hugging Face checkpoint directory, a .onnx file, or file.py:factory "
                         "(trtcompile never downloads models)")
