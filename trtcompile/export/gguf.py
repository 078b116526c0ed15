"""A GGUF file (llama.cpp's format, what most people who run LLMs locally have) as the source.

transformers' GGUF loader reads the architecture, config, tokenizer and chat template from the
file and dequantizes the weights to float32, so from here on the model is an ordinary Hugging Face
model. The weights are dequantized k-bit values: the float32 reference that verification compares
against is already rounded to the file's quantization, and the manifest says so (`model.weights`).
"""

from __future__ import annotations

import contextlib
import functools
import tempfile
from collections import Counter
from pathlib import Path

from trtcompile.errors import UserError
from trtcompile.export.source import Source, hash_files


@contextlib.contextmanager
def parsed_once(path: Path):
    """Within the block, every `gguf.GGUFReader(path)` is one shared, already parsed reader, and gguf's
    tensor-name map is built once per architecture.

    Why: transformers parses the file anew for the config, the weights and the tokenizer (and we for
    the quantization info), and parsing the metadata (a 49k-token vocabulary is ~600k small numpy
    views) takes seconds each time; its weight-name mapping rebuilds gguf's TensorNameMap once per
    submodule (~400 times for SmolLM2). Together ~2/3 of loading SmolLM2's GGUF. The reader is
    read-only (memory-mapped, mode 'r'), so sharing it changes nothing that transformers computes.
    The shared reader also slices plain arrays instead of np.memmap (see _plain_array_reader).
    """
    import gguf

    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map
    fast_reader = _plain_array_reader(original_reader)
    shared: dict[str, object] = {}
    key = str(Path(path).resolve())

    def shared_reader(file, mode="r"):
        if mode != "r" or str(Path(file).resolve()) != key:
            return original_reader(file, mode)
        if key not in shared:
            shared[key] = fast_reader(file, mode)
        return shared[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = shared_reader, functools.lru_cache(maxsize=None)(original_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map


def _plain_array_reader(reader_class):
    """gguf's reader, slicing the file's bytes as a plain ndarray view of the same mapping.

    Why: the reader cuts every metadata value (each of a vocabulary's tokens and merges) out of an
    np.memmap, and every memmap slice runs memmap's Python-level __getitem__/__array_finalize__;
    on a plain ndarray view the same slices are C-level. SmolLM2: the parse 3.1 s -> 1.1 s, and
    transformers' reading of the parsed values 4.9 s -> 1.0 s. The bytes and the mapping are the
    same (the view's base is the memmap, which keeps the file mapped)."""
    import numpy as np

    class PlainArrayReader(reader_class):
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):  # the reader's __init__ assigns np.memmap(path) here
            self._data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return PlainArrayReader


def gguf_quantization(path: Path) -> dict:
    """The file's declared type and the tensor types it holds, read from the header (memory-mapped)."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as exc:  # gguf raises ValueError/struct.error/... for a damaged file
        raise UserError(f"{str(path)!r} is not a readable GGUF file: {exc}",
                        hint="check the file (a complete download of a .gguf model)") from exc
    info = {"format": "gguf", "file": path.name,
            "tensor_types": dict(Counter(t.tensor_type.name for t in reader.tensors).most_common())}
    field = reader.fields.get("general.file_type")
    if field is not None:
        try:
            info["file_type"] = gguf.LlamaFileType(int(field.parts[field.data[0]][0])).name.replace("MOSTLY_", "")
        except ValueError:
            info["file_type"] = str(int(field.parts[field.data[0]][0]))
    info["quantized"] = any(t not in ("F32", "F16", "BF16") for t in info["tensor_types"])
    return info


def load_gguf_source(path: Path, settings=None) -> Source:
    if not path.is_file():
        raise UserError(f"GGUF file {str(path)!r} does not exist", hint="check the path")
    try:
        import gguf  # noqa: F401  (transformers' loader needs it; say so before it does)
        import accelerate  # noqa: F401
    except ImportError as exc:
        raise UserError(f"loading {str(path)!r} needs the packages gguf and accelerate ({exc})",
                        hint="pip install gguf accelerate") from exc
    with parsed_once(path):
        return _load(path, settings)


def _load(path: Path, settings) -> Source:
    from trtcompile.export.hf import import_transformers, task_of, wrap_model

    weights = gguf_quantization(path)
    transformers = import_transformers()
    directory, name = str(path.parent), path.name
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, local_files_only=True,
                                                                  attn_implementation="sdpa", trust_remote_code=False,
                                                                  dtype="float32").eval()
    except Exception as exc:  # transformers raises many types for an unsupported file
        raise UserError(f"transformers could not load {str(path)!r} as a causal LM: {str(exc).splitlines()[0]}",
                        hint="transformers' GGUF loader supports Llama, Mistral, Qwen2/3, Phi-3, Gemma and a few "
                             "more architectures; convert other models to a checkpoint directory") from exc
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are dequantized now; nothing downstream is GGUF
    config["architectures"] = config.get("architectures") or [type(model).__name__]
    weights["dequantized_to"] = "float32"

    # The tokenizer and chat template live inside the GGUF; the package needs them as files.
    tokenizer_tmp = tempfile.TemporaryDirectory(prefix="trtcompile-gguf-tokenizer-")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(directory, gguf_file=name, local_files_only=True,
                                                                trust_remote_code=False)
        tokenizer.save_pretrained(tokenizer_tmp.name)
        tokenizer_dir = Path(tokenizer_tmp.name)
    except Exception as exc:  # a GGUF without a tokenizer still compiles (generate then needs --ids)
        tokenizer_tmp.cleanup()
        tokenizer_tmp, tokenizer_dir = None, None
        weights["tokenizer_error"] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    source = Source(kind="gguf", spec=str(path), name=path.stem, task=task_of(config), input_names=[],
                    output_names=[], example_inputs={}, config=config, tokenizer_dir=tokenizer_dir,
                    sha256=hash_files([path]))
    source.weights = weights
    source._keepalive = tokenizer_tmp  # the directory lives as long as the source
    wrap_model(source, model, config, settings)
    return source
