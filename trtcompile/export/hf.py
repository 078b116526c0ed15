"""A local Hugging Face checkpoint directory as the source. Never downloads anything.

The architecture in config.json decides the task: `*ForCausalLM`/`*LMHeadModel` give logits with a
KV cache (export/kv_cache.py), vision configs give patch embeddings from pixel values, everything
else is an encoder giving its last hidden state.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trtcompile.errors import UserError
from trtcompile.export.source import Source, hash_files

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json")


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.is_file():
        raise UserError(f"{str(directory)!r} has no config.json, so it is not a Hugging Face checkpoint",
                        hint="point at the directory that save_pretrained() wrote (config.json + weights)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{str(path)!r} is not valid JSON: {exc}", hint="repair or re-save the checkpoint") from exc
    if not isinstance(config, dict) or "model_type" not in config:
        raise UserError(f"{str(path)!r} has no 'model_type'", hint="re-save the checkpoint with save_pretrained()")
    return config


# Architectures whose task head is part of the model: compiled with the head, outputs as HF names them.
HEADS = {
    "ForSequenceClassification": ("sequence-classification", "AutoModelForSequenceClassification", ["logits"]),
    "ForTokenClassification": ("token-classification", "AutoModelForTokenClassification", ["logits"]),
    "ForQuestionAnswering": ("question-answering", "AutoModelForQuestionAnswering", ["start_logits", "end_logits"]),
    "ForMaskedLM": ("masked-lm", "AutoModelForMaskedLM", ["logits"]),
}


def task_of(config: dict) -> str:
    archs = config.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal-lm"
    for suffix, (task, _, _) in HEADS.items():
        if any(a.endswith(suffix) for a in archs):
            return task
    if "pixel_values" in str(config.get("main_input_name", "")) or ("image_size" in config and "num_channels" in config):
        return "vision-encoder"
    return "encoder"


def check_remote_code(config: dict, directory: Path, trust_remote_code: bool) -> None:
    """A checkpoint that ships its own Python (config.json `auto_map`) runs it only when asked to."""
    if config.get("auto_map") and not trust_remote_code:
        files = sorted({str(v).split(".")[0] + ".py" for v in _flat(config["auto_map"]) if "." in str(v)})
        raise UserError(f"checkpoint {str(directory)!r} ships its own code ({', '.join(files) or 'auto_map'} via "
                        f"'auto_map' in config.json), which trtcompile does not run by default",
                        hint="read that code, then pass --trust-remote-code to run it")


def _flat(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from _flat(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _flat(v)
    elif value is not None:
        yield value


def load_hf_source(directory: Path, settings=None, *, trust_remote_code: bool = False) -> Source:
    config = read_config(directory)
    check_remote_code(config, directory, trust_remote_code)
    weights = [directory / f for f in WEIGHT_FILES if (directory / f).is_file()]
    if not weights:
        raise UserError(f"{str(directory)!r} has config.json but no weights",
                        hint=f"expected one of {', '.join(WEIGHT_FILES)}; re-save with save_pretrained()")
    task = task_of(config)
    transformers = import_transformers()
    # SDPA exports as ONNX Attention at opset 23; eager stays MatMul/Softmax for the fusion pass.
    attn = config.get("_attn_implementation") or "sdpa"
    heads = {task: getattr(transformers, auto) for task, auto, _ in HEADS.values()}
    loader = {"causal-lm": transformers.AutoModelForCausalLM, **heads}.get(task, transformers.AutoModel)
    try:
        # trust_remote_code is always explicit: left None, transformers asks y/N on stdin and runs the
        # checkpoint's code on a "y" (even a piped one).
        model = loader.from_pretrained(str(directory), local_files_only=True, attn_implementation=attn,
                                       trust_remote_code=trust_remote_code).eval()
    except Exception as exc:  # transformers raises many types for a bad checkpoint
        raise UserError(f"could not load the checkpoint {str(directory)!r}: {str(exc).splitlines()[0]}",
                        hint="check the config.json and the weight files (re-save with save_pretrained())") from exc
    model.float()

    tokenizer_dir = directory if any((directory / f).is_file() for f in TOKENIZER_FILES) else None
    source = Source(kind="hf", spec=str(directory), name=directory.resolve().name, task=task,
                    input_names=[], output_names=[], example_inputs={}, config=config,
                    tokenizer_dir=tokenizer_dir,
                    sha256=hash_files([directory / "config.json", *weights]))
    wrap_model(source, model, config, settings)
    return source


def import_transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub, even by accident
    try:
        import transformers
    except ImportError as exc:
        raise UserError("loading a Hugging Face checkpoint needs transformers: pip install transformers") from exc
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def wrap_model(source: Source, model, config: dict, settings=None) -> None:
    """Fill in the source's module, names, examples and default profile for its task.

    `settings` (ExportSettings) chooses the causal-LM wrapper (KV-cache form and dtype, logits)."""
    if source.task == "causal-lm":
        _as_causal_lm(source, model, config, settings)
    elif source.task == "vision-encoder":
        _as_vision_encoder(source, model, config)
    else:
        outputs = next((names for t, _, names in HEADS.values() if t == source.task), ["last_hidden_state"])
        _as_encoder(source, model, config, outputs)


def _as_encoder(source: Source, model, config: dict, outputs: list[str]) -> None:
    """Token inputs in; `outputs` (last_hidden_state, or a task head's logits) out."""
    import inspect

    import torch

    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if "token_type_ids" in params else [])

    class Encoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **inputs):
            result = self.inner(**inputs)
            return tuple(getattr(result, name) for name in outputs)

    batch, seq = 2, 16
    vocab = int(config.get("vocab_size") or 2)
    examples = {"input_ids": torch.randint(0, vocab, (batch, seq)),
                "attention_mask": torch.ones(batch, seq, dtype=torch.int64),
                "token_type_ids": torch.zeros(batch, seq, dtype=torch.int64)}
    source.module = Encoder(model).eval()
    source.input_names = names
    source.output_names = list(outputs)
    source.example_inputs = {n: examples[n] for n in names}
    source.value_ranges = {"input_ids": (0, vocab), "attention_mask": (0, 2),
                           "token_type_ids": (0, int(config.get("type_vocab_size") or 1))}
    max_len = _max_positions(config)
    source.default_profile = lambda: _encoder_profile(names, max_len)
    source.axis_limits = _limits(config, names)


def _as_vision_encoder(source: Source, model, config: dict) -> None:
    import torch

    class Vision(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values):
            return (self.inner(pixel_values=pixel_values).last_hidden_state,)

    size, channels = int(config["image_size"]), int(config.get("num_channels", 3))
    source.module = Vision(model).eval()
    source.input_names = ["pixel_values"]
    source.output_names = ["last_hidden_state"]
    source.example_inputs = {"pixel_values": torch.randn(2, channels, size, size)}
    source.default_profile = lambda: {
        "inputs": {"pixel_values": ["batch", "_", "_", "_"]},
        "buckets": {"small": {"batch": [1, 1, 4]}, "large": {"batch": [1, 16, 32]}},
    }


def _as_causal_lm(source: Source, model, config: dict, settings=None) -> None:
    from trtcompile.export.kv_cache import causal_lm_io, profile_max_cache
    from trtcompile.settings import ExportSettings

    settings = settings or ExportSettings()

    def wrap(max_cache: int | None = None) -> None:
        io = causal_lm_io(model, config, kv_cache=settings.kv_cache, kv_cache_dtype=settings.kv_cache_dtype,
                          all_logits=settings.all_logits, max_cache=max_cache)
        source.module = io.module
        source.input_names = io.input_names
        source.output_names = io.output_names
        source.example_inputs = io.example_inputs
        source.known_shapes = io.shapes
        source.manifest_extra = io.manifest_extra
        source.value_ranges = io.value_ranges
        source.onnx_translations = io.onnx_translations
        source.min_opset = io.min_opset
        profile_of = io.default_profile  # not `io` itself: it holds the model, which release() must free
        source.default_profile = lambda: profile_of(config)

    def fit_profile(profile: dict) -> None:  # a static cache holds the profile's longest kv_sequence
        want = profile_max_cache(profile)
        if want and want != source.manifest_extra["generation"].get("max_cache", want):
            wrap(want)

    wrap()
    source.fit_profile = fit_profile if settings.kv_cache == "static" else None
    source.axis_limits = _limits(config, ["attention_mask"])  # past + new tokens (kv_sequence when static)


def _max_positions(config: dict) -> int:
    """The default profile's longest sequence: the model's own limit, at most 4096."""
    from trtcompile.export.limits import config_max_positions

    found = config_max_positions(config)
    return min(found[0], 4096) if found else 512


def _limits(config: dict, inputs: list[str]) -> list:
    from trtcompile.export.limits import AxisLimit, config_max_positions

    found = config_max_positions(config)
    return [AxisLimit(name, 1, found[0], found[1]) for name in inputs] if found else []


def _encoder_profile(names: list[str], max_len: int) -> dict:
    short = min(128, max_len)
    buckets = {"short": {"batch": [1, 1, 8], "sequence": [1, min(64, short), short]}}
    if max_len > short:
        buckets["long"] = {"batch": [1, 1, 8], "sequence": [1, min(256, max_len), max_len]}
    return {"inputs": {n: ["batch", "sequence"] for n in names}, "buckets": buckets}
