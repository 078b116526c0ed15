"""Causal LMs with a KV cache: one graph that serves prefill (past length 0) and decode.

    inputs   input_ids [batch, sequence]   attention_mask [batch, past_sequence+sequence]
             position_ids [batch, sequence]   past_key_values.{i}.key/value [batch, kv_heads, past_sequence, head_dim]
    outputs  logits [batch, sequence, vocab]   present.{i}.key/value [batch, kv_heads, past_sequence+sequence, head_dim]

The wrapper hands the flat past tensors to the model as a `DynamicCache`, whose update is a
`torch.cat` of past and new K/V *before* SDPA: the exported `Attention` node sees the full K/V
and an explicit mask (causal + padding) and never `past_key`/`is_causal`, which is what
TensorRT's parser accepts and what keeps decode steps aligned (tensorrt11.md). `position_ids` is
an input because the exporter's own rotary fusion otherwise fixes cos/sin to batch 1
(environment.md); the runtime computes positions from the attention mask, as HF `generate` does.

The past tensors' names (`past_key_values.0.key`) are not Python identifiers, so forward takes
`(*args, **kwargs)`: keywords by name (as verification calls it) or positionally in
`input_names` order (torch.export cannot map `dynamic_shapes` onto `**kwargs`, so
export/torch_export.py passes inputs positionally).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

# Where the compile step copies the checkpoint's tokenizer inside a package (package.TOKENIZER_DIR).
TOKENIZER_DIR = "tokenizer"
# Longest context a default profile covers; longer needs an explicit profile (decoder-long.yaml).
DEFAULT_MAX_CONTEXT = 2048


@dataclass
class DecoderIO:
    module: Any  # torch.nn.Module: forward(*inputs in input_names order) or forward(**{name: tensor})
    input_names: list[str]
    output_names: list[str]
    example_inputs: dict[str, Any]  # name -> torch.Tensor, past length > 0 so export keeps it dynamic
    shapes: dict[str, list]  # symbolic shape of every input and output
    manifest_extra: dict  # {"generation": {...}}
    default_profile: Callable[[dict], dict] = field(default=None)


def kv_names(num_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return past, present


def _decoder_class():
    import torch

    class CausalLMWithCache(torch.nn.Module):
        """Flat past K/V in, logits and flat present K/V out (see the module docstring)."""

        def __init__(self, model, input_names: list[str], num_layers: int):
            super().__init__()
            self.model = model
            self.input_names = list(input_names)
            self.num_layers = num_layers

        def forward(self, *args, **kwargs):
            from transformers import DynamicCache

            inputs = dict(zip(self.input_names, args), **kwargs)
            past = [(inputs[f"past_key_values.{i}.key"], inputs[f"past_key_values.{i}.value"])
                    for i in range(self.num_layers)]
            # No config: plain DynamicLayers, so present is always concat(past, new), never cropped.
            cache = DynamicCache(ddp_cache_data=past)
            out = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                             position_ids=inputs["position_ids"], past_key_values=cache, use_cache=True,
                             return_dict=True)
            flat = [out.logits]
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return tuple(flat)

    return CausalLMWithCache


def _generation_ids(model, config: dict) -> dict:
    """bos/eos/pad from generation_config.json (as HF `generate` uses them), else config.json."""
    gen = getattr(model, "generation_config", None)

    def pick(key):
        value = getattr(gen, key, None) if gen is not None else None
        return config.get(key) if value is None else value

    eos = pick("eos_token_id")
    eos = [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]
    bos, pad = pick("bos_token_id"), pick("pad_token_id")
    return {"bos_token_id": None if bos is None else int(bos), "eos_token_id": eos,
            "pad_token_id": None if pad is None else int(pad)}


def max_context(config: dict) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        if config.get(key):
            return int(config[key])
    return DEFAULT_MAX_CONTEXT


def default_profile(config: dict) -> dict:
    """Prefill (many new tokens, no past) and decode (one new token, long past) buckets."""
    total = min(max_context(config), DEFAULT_MAX_CONTEXT)
    prompt = min(512, total)
    return {
        "inputs": decoder_profile_inputs(),
        "buckets": {
            "prefill": {"batch": [1, 1, 4], "sequence": [1, min(64, prompt), prompt], "past_sequence": [0, 0, 0]},
            "decode": {"batch": [1, 1, 4], "sequence": [1, 1, 1],
                       "past_sequence": [1, min(256, total - 1), total - 1]},
        },
    }


def decoder_profile_inputs() -> dict:
    return {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "past_sequence+sequence"],
            "position_ids": ["batch", "sequence"], "past_key_values.*": ["batch", "_", "past_sequence", "_"]}


def causal_lm_io(model, config: dict) -> DecoderIO:
    """Wrap a HF causal LM (GPT-2, Llama, Mistral, Qwen2, ...) for export with a KV cache."""
    import torch

    model.eval()
    vocab = int(config.get("vocab_size") or model.config.vocab_size)
    # The cache geometry comes from one real call, not from config keys that differ per family.
    with torch.inference_mode():
        probe = model(input_ids=torch.zeros(1, 1, dtype=torch.int64), use_cache=True, return_dict=True)
    layers = getattr(probe.past_key_values, "layers", None)
    if not layers or any(getattr(layer, "keys", None) is None for layer in layers):
        from trtcompile.errors import UserError

        arch = (config.get("architectures") or [type(model).__name__])[0]
        raise UserError(f"{arch} does not return a key/value cache (got {type(probe.past_key_values).__name__}), "
                        f"so it cannot be exported as a decoder with past/present K/V",
                        hint="trtcompile supports attention decoders (GPT-2, Llama, Mistral, Qwen2, ...); "
                             "export it as an encoder from a file.py:factory instead")
    num_layers = len(layers)
    _, kv_heads, _, head_dim = layers[0].keys.shape
    past_names, present_names = kv_names(num_layers)
    input_names = ["input_ids", "attention_mask", "position_ids", *past_names]
    output_names = ["logits", *present_names]

    batch, seq, past = 2, 3, 4
    gen = torch.Generator().manual_seed(0)
    examples = {
        "input_ids": torch.randint(0, vocab, (batch, seq), generator=gen),
        "attention_mask": torch.ones(batch, past + seq, dtype=torch.int64),
        "position_ids": torch.arange(past, past + seq, dtype=torch.int64).expand(batch, seq).contiguous(),
    }
    for name in past_names:
        examples[name] = torch.randn(batch, kv_heads, past, head_dim, generator=gen)

    kv_shape = ["batch", int(kv_heads), "past_sequence", int(head_dim)]
    shapes = {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "past_sequence+sequence"],
              "position_ids": ["batch", "sequence"], "logits": ["batch", "sequence", vocab]}
    shapes.update({n: list(kv_shape) for n in past_names})
    shapes.update({n: ["batch", int(kv_heads), "past_sequence+sequence", int(head_dim)] for n in present_names})

    generation = {
        "num_layers": num_layers, "num_kv_heads": int(kv_heads), "head_dim": int(head_dim), "vocab_size": vocab,
        "input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
        "logits": "logits", "past_inputs": past_names, "present_outputs": present_names,
        "max_context": max_context(config), "tokenizer_dir": TOKENIZER_DIR, **_generation_ids(model, config),
    }
    module = _decoder_class()(model, input_names, num_layers).eval()
    return DecoderIO(module=module, input_names=input_names, output_names=output_names, example_inputs=examples,
                     shapes=shapes, manifest_extra={"generation": generation}, default_profile=default_profile)
