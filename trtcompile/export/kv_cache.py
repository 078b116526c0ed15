"""Causal LMs with a KV cache: one graph that serves prefill (chunks of new tokens) and decode.

Two forms (`--kv-cache static|concat`, ExportSettings.kv_cache):

static (the default): each layer's cache is a fixed-size graph input that the graph updates in place

    inputs   input_ids [batch, sequence]   position_ids [batch, sequence]
             attention_mask [batch, kv_sequence]   (1 = that cache slot may be attended to)
             cache_position [batch]                (where each row's new tokens are written)
             past_key_values.{i}.key/value [batch, kv_heads, max_cache, head_dim]
    outputs  logits [batch, 1, vocab]              (each row's last position; --all-logits: every position)
             present.{i}.key/value [batch, kv_heads, max_cache, head_dim]

  present = TensorScatter(past, new K/V, cache_position, axis=2, mode="linear") (opset 24; TensorRT's
  KV-cache update layer since 10.15, in place when past and present share one buffer). Attention
  reads present[:, :, :kv_sequence] -- work proportional to the context in use, not to max_cache;
  when kv_sequence == max_cache the optimized graph reads the cache itself, without the Slice's
  copy (passes/read_cache_in_place.py) -- under one explicit bool mask: query i of row b sees slot j iff attention_mask[b, j] and
  j <= cache_position[b] + i. Rows are independent (no left padding): each has its own length,
  positions and write position, which is what continuous batching needs. The cache precision is
  its own (`--kv-cache-dtype`): new K/V are cast to it before the scatter and back after the read.

concat (TensorRT before 10.15): past K/V [batch, kv_heads, past_sequence, head_dim] in, present =
  concat(past, new) out, attention_mask [batch, past_sequence+sequence], left-padded batches.

Both keep TensorRT's Attention import rules (tensorrt11.md): the cache update is outside the node
(no past_key/past_value inputs), one output, an explicit mask and never `is_causal`. `position_ids`
is an input because the exporter's own rotary fusion otherwise fixes cos/sin to batch 1
(environment.md). Logits are computed for the last position only by default (HF's
`logits_to_keep=1`): lm_head over one position instead of all, and the only logits generation reads.

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
# Rows of the static cache a default profile's decode bucket holds: the runtime's slots, i.e. how
# many requests it decodes together (continuous batching).
DEFAULT_SLOTS = 8
KV_CACHE_FORMS = ("static", "concat")
KV_CACHE_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# TensorScatter, the static cache's update, is an opset-24 op.
STATIC_CACHE_OPSET = 24


@dataclass
class DecoderIO:
    module: Any  # torch.nn.Module: forward(*inputs in input_names order) or forward(**{name: tensor})
    input_names: list[str]
    output_names: list[str]
    example_inputs: dict[str, Any]  # name -> torch.Tensor, past length > 0 so export keeps it dynamic
    shapes: dict[str, list]  # symbolic shape of every input and output
    manifest_extra: dict  # {"generation": {...}}
    default_profile: Callable[[dict], dict] = field(default=None)
    value_ranges: dict = field(default_factory=dict)
    # torch op -> onnxscript function, for the dynamo exporter (the static cache's TensorScatter).
    onnx_translations: dict = field(default_factory=dict)
    min_opset: int = 0


def kv_names(num_layers: int) -> tuple[list[str], list[str]]:
    past = [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    present = [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]
    return past, present


_BASE = {}


def _wrapper_base():
    """What both cache wrappers share: the wrapped model and the inputs by name (keywords, or
    positionally in input_names order), built once."""
    if not _BASE:
        import torch

        class DecoderWrapper(torch.nn.Module):
            def __init__(self, model, input_names: list[str], num_layers: int, all_logits: bool = False):
                super().__init__()
                self.model = model
                self.input_names = list(input_names)
                self.num_layers = num_layers
                self.logits_to_keep = 0 if all_logits else 1

            def named_inputs(self, args, kwargs) -> dict:
                return dict(zip(self.input_names, args), **kwargs)

        _BASE["class"] = DecoderWrapper
    return _BASE["class"]


def _decoder_class():
    class CausalLMWithCache(_wrapper_base()):
        """Flat past K/V in, logits and flat present K/V out, present = concat(past, new)."""

        def forward(self, *args, **kwargs):
            from transformers import DynamicCache

            inputs = self.named_inputs(args, kwargs)
            past = [(inputs[f"past_key_values.{i}.key"], inputs[f"past_key_values.{i}.value"])
                    for i in range(self.num_layers)]
            # No config: plain DynamicLayers, so present is always concat(past, new), never cropped.
            cache = DynamicCache(ddp_cache_data=past)
            out = self.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                             position_ids=inputs["position_ids"], past_key_values=cache, use_cache=True,
                             return_dict=True, logits_to_keep=self.logits_to_keep)
            flat = [out.logits]
            for layer in out.past_key_values.layers:
                flat += [layer.keys, layer.values]
            return tuple(flat)

    return CausalLMWithCache


_STATIC = {}


def _static_parts():
    """The TensorScatter custom op (eager semantics + ONNX translation) and the static wrapper, built once."""
    if _STATIC:
        return _STATIC
    import torch
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    # A schema string, since `from __future__ import annotations` leaves the annotations unevaluated.
    @torch.library.custom_op("trtcompile::tensor_scatter", mutates_args=(),
                             schema="(Tensor cache, Tensor update, Tensor write_indices) -> Tensor")
    def tensor_scatter(cache, update, write_indices):
        """ONNX TensorScatter(axis=2, mode="linear"): row b's update lands at write_indices[b] onwards."""
        out = cache.clone()
        new = update.shape[2]
        for row in range(cache.shape[0]):
            start = int(write_indices[row])
            out[row, :, start:start + new] = update[row]
        return out

    @tensor_scatter.register_fake
    def _(cache, update, write_indices):
        return torch.empty_like(cache)

    def tensor_scatter_onnx(cache, update, write_indices):
        from onnxscript.onnx_opset import opset24 as op

        return op.TensorScatter(cache, update, write_indices, axis=2, mode="linear")

    class ScatterLayer(DynamicLayer):
        """One layer of the static cache: scatter the new K/V in, hand attention the first kv_sequence slots."""

        def __init__(self, keys, values, cache_position, kv_sequence: int):
            super().__init__()
            self.cache_keys, self.cache_values = keys, values
            self.cache_position, self.kv_sequence = cache_position, kv_sequence
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            self.keys = tensor_scatter(self.cache_keys, key_states.to(self.cache_keys.dtype), self.cache_position)
            self.values = tensor_scatter(self.cache_values, value_states.to(self.cache_values.dtype),
                                         self.cache_position)
            read = slice(0, self.kv_sequence)
            return (self.keys[:, :, read].to(key_states.dtype), self.values[:, :, read].to(value_states.dtype))

        def get_seq_length(self) -> int:
            return 0  # positions are inputs and the mask is built here: nothing in HF reads this

    class CausalLMWithStaticCache(_wrapper_base()):
        """Fixed-size caches in, logits and the updated caches out (see the module docstring)."""

        def forward(self, *args, **kwargs):
            inputs = self.named_inputs(args, kwargs)
            ids, mask, write = inputs["input_ids"], inputs["attention_mask"], inputs["cache_position"]
            new, kv_sequence = ids.shape[1], mask.shape[1]
            cache = DynamicCache()
            cache.layers = [ScatterLayer(inputs[f"past_key_values.{i}.key"], inputs[f"past_key_values.{i}.value"],
                                         write, kv_sequence) for i in range(self.num_layers)]
            # Per row: slot j is visible to new token i iff the mask allows it and j <= write + i. A 4D
            # mask is used by HF as given, so every family gets exactly this (no shared cache_position).
            query_at = write[:, None] + torch.arange(new, device=ids.device)[None, :]  # [batch, new]
            causal = torch.arange(kv_sequence, device=ids.device)[None, None, :] <= query_at[:, :, None]
            full_mask = (mask[:, None, :] != 0) & causal  # [batch, new, kv_sequence]
            out = self.model(input_ids=ids, attention_mask=full_mask[:, None], position_ids=inputs["position_ids"],
                             past_key_values=cache, use_cache=True, return_dict=True,
                             logits_to_keep=self.logits_to_keep)
            flat = [out.logits]
            for layer in cache.layers:
                flat += [layer.keys, layer.values]
            return tuple(flat)

    _STATIC.update(op=torch.ops.trtcompile.tensor_scatter.default, onnx=tensor_scatter_onnx,
                   module=CausalLMWithStaticCache)
    return _STATIC


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


def default_max_cache(config: dict) -> int:
    return min(max_context(config), DEFAULT_MAX_CONTEXT)


def default_profile(config: dict, kv_cache: str = "concat") -> dict:
    """Prefill (many new tokens) and decode (one new token per row) buckets."""
    total = default_max_cache(config)
    prompt = min(512, total)
    if kv_cache == "static":
        # Prefill writes chunks of up to `prompt` tokens anywhere in the cache (chunked prefill), so
        # both buckets read up to the whole cache; the runtime's slots are the decode batch.
        return {
            "inputs": static_profile_inputs(),
            "buckets": {
                "prefill": {"batch": [1, 1, 4], "sequence": [1, min(64, prompt), prompt],
                            "kv_sequence": [1, prompt, total]},
                "decode": {"batch": [1, 1, DEFAULT_SLOTS], "sequence": [1, 1, 1],
                           "kv_sequence": [1, min(256, total), total]},
            },
        }
    return {
        "inputs": decoder_profile_inputs(),
        "buckets": {
            "prefill": {"batch": [1, 1, 4], "sequence": [1, min(64, prompt), prompt], "past_sequence": [0, 0, 0]},
            "decode": {"batch": [1, 1, 4], "sequence": [1, 1, 1],
                       "past_sequence": [1, min(256, total - 1), total - 1]},
        },
    }


def decoder_profile_inputs() -> dict:
    """The concat form's inputs."""
    return {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "past_sequence+sequence"],
            "position_ids": ["batch", "sequence"], "past_key_values.*": ["batch", "_", "past_sequence", "_"]}


def static_profile_inputs() -> dict:
    """The static form's inputs: the cache's length is static ("_": the export's max_cache)."""
    return {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "kv_sequence"],
            "position_ids": ["batch", "sequence"], "cache_position": ["batch"],
            "past_key_values.*": ["batch", "_", "_", "_"]}


def profile_max_cache(profile_dict: dict) -> int | None:
    """The longest kv_sequence a static-cache profile asks for: the cache must hold that many slots."""
    highs = [int(b["kv_sequence"][2]) for b in profile_dict.get("buckets", {}).values() if "kv_sequence" in b]
    return max(highs) if highs else None


def verification_precision(precision: str, manifest: dict) -> str:
    """The precision a package is verified at: an FP16 KV cache holds K/V to FP16 whatever the
    weights (its outputs are FP16, and a rounding flip of a cached value moves the logits by more
    than FP32's bound), so an FP32 package with an FP16 cache is held to FP16's tolerances."""
    cache = (manifest.get("generation") or {}).get("kv_cache_dtype")
    if precision == "fp32" and cache in ("float16", "bfloat16"):
        return "fp16" if cache == "float16" else "bf16"
    return precision


def export_settings_for(generation: dict | None):
    """The ExportSettings that rebuild a package's decoder wrapper (KV-cache form, cache dtype,
    logits) from its manifest's `generation` section, so verification compares like with like."""
    from trtcompile.settings import ExportSettings

    if not generation:
        return ExportSettings()
    names = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
    return ExportSettings(kv_cache=generation.get("kv_cache", "concat"),
                          kv_cache_dtype=names.get(generation.get("kv_cache_dtype"), "auto"),
                          all_logits=bool(generation.get("all_logits", True)))


def causal_lm_io(model, config: dict, *, kv_cache: str = "static", kv_cache_dtype: str | None = None,
                 all_logits: bool = False, max_cache: int | None = None) -> DecoderIO:
    """Wrap a HF causal LM (GPT-2, Llama, Mistral, Qwen2, ...) for export with a KV cache."""
    import torch

    from trtcompile.errors import UserError

    if kv_cache not in KV_CACHE_FORMS:
        raise UserError(f"--kv-cache {kv_cache!r} is not one of {', '.join(KV_CACHE_FORMS)}",
                        hint="static (in-place TensorScatter cache, TensorRT >= 10.15) or concat (older TensorRT)")
    if kv_cache_dtype not in (None, "auto", *KV_CACHE_DTYPES):
        raise UserError(f"--kv-cache-dtype {kv_cache_dtype!r} is not one of auto, {', '.join(KV_CACHE_DTYPES)}",
                        hint="fp16 halves the cache's memory traffic; fp32 is exact")
    model.eval()
    vocab = int(config.get("vocab_size") or model.config.vocab_size)
    # The cache geometry comes from one real call, not from config keys that differ per family.
    with torch.inference_mode():
        probe = model(input_ids=torch.zeros(1, 1, dtype=torch.int64), use_cache=True, return_dict=True)
    layers = getattr(probe.past_key_values, "layers", None)
    if not layers or any(getattr(layer, "keys", None) is None for layer in layers):
        arch = (config.get("architectures") or [type(model).__name__])[0]
        raise UserError(f"{arch} does not return a key/value cache (got {type(probe.past_key_values).__name__}), "
                        f"so it cannot be exported as a decoder with past/present K/V",
                        hint="trtcompile supports attention decoders (GPT-2, Llama, Mistral, Qwen2, ...); "
                             "export it as an encoder from a file.py:factory instead")
    num_layers = len(layers)
    _, kv_heads, _, head_dim = layers[0].keys.shape
    weights_dtype = layers[0].keys.dtype
    cache_dtype = weights_dtype if kv_cache_dtype in (None, "auto") else getattr(torch, KV_CACHE_DTYPES[kv_cache_dtype])
    if kv_cache_dtype == "bf16":
        # TensorRT's KV-cache layer takes BF16, but ONNX Runtime's Python API cannot feed or verify a
        # bfloat16 tensor (checked with onnxruntime 1.32), so such a package could not be checked here.
        raise UserError("--kv-cache-dtype bf16 cannot be verified here: ONNX Runtime (CPU, Python) does not take "
                        "bfloat16 tensors", hint="use --kv-cache-dtype fp16 (same size, and TensorRT's KV-cache "
                                                 "layer takes it too)")
    if kv_cache == "concat" and cache_dtype != weights_dtype:
        raise UserError(f"--kv-cache-dtype {kv_cache_dtype} needs --kv-cache static",
                        hint="the concat cache has the weights' precision; drop --kv-cache-dtype or use static")
    past_names, present_names = kv_names(num_layers)
    logits_shape = ["batch", "sequence" if all_logits else 1, vocab]
    gen = torch.Generator().manual_seed(0)
    generation = {
        "num_layers": num_layers, "num_kv_heads": int(kv_heads), "head_dim": int(head_dim), "vocab_size": vocab,
        "input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
        "logits": "logits", "past_inputs": past_names, "present_outputs": present_names,
        "max_context": max_context(config), "tokenizer_dir": TOKENIZER_DIR, **_generation_ids(model, config),
        "kv_cache": kv_cache, "all_logits": bool(all_logits),
        "kv_cache_dtype": str(cache_dtype).replace("torch.", ""),
    }
    if kv_cache == "concat":
        input_names = ["input_ids", "attention_mask", "position_ids", *past_names]
        batch, seq, past = 2, 3, 4
        examples = {
            "input_ids": torch.randint(0, vocab, (batch, seq), generator=gen),
            "attention_mask": torch.ones(batch, past + seq, dtype=torch.int64),
            "position_ids": torch.arange(past, past + seq, dtype=torch.int64).expand(batch, seq).contiguous(),
        }
        for name in past_names:
            examples[name] = torch.randn(batch, kv_heads, past, head_dim, generator=gen)
        shapes = {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "past_sequence+sequence"],
                  "position_ids": ["batch", "sequence"], "logits": logits_shape}
        shapes.update({n: ["batch", int(kv_heads), "past_sequence", int(head_dim)] for n in past_names})
        shapes.update({n: ["batch", int(kv_heads), "past_sequence+sequence", int(head_dim)] for n in present_names})
        module = _decoder_class()(model, input_names, num_layers, all_logits).eval()
        return DecoderIO(module=module, input_names=input_names, output_names=["logits", *present_names],
                         example_inputs=examples, shapes=shapes, manifest_extra={"generation": generation},
                         default_profile=lambda cfg: default_profile(cfg, "concat"),
                         value_ranges={"input_ids": (0, vocab), "attention_mask": (0, 2)})

    max_cache = int(max_cache or default_max_cache(config))
    input_names = ["input_ids", "attention_mask", "position_ids", "cache_position", *past_names]
    batch, seq, written = 2, 3, 4
    examples = {
        "input_ids": torch.randint(0, vocab, (batch, seq), generator=gen),
        "attention_mask": torch.ones(batch, written + seq, dtype=torch.int64),
        "position_ids": torch.arange(written, written + seq, dtype=torch.int64).expand(batch, seq).contiguous(),
        "cache_position": torch.full((batch,), written, dtype=torch.int64),
    }
    for name in past_names:
        examples[name] = torch.randn(batch, kv_heads, max_cache, head_dim, generator=gen).to(cache_dtype)
    cache_shape = ["batch", int(kv_heads), max_cache, int(head_dim)]
    shapes = {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "kv_sequence"],
              "position_ids": ["batch", "sequence"], "cache_position": ["batch"], "logits": logits_shape}
    shapes.update({n: list(cache_shape) for n in [*past_names, *present_names]})
    generation.update(cache_position="cache_position", max_cache=max_cache)
    parts = _static_parts()
    module = parts["module"](model, input_names, num_layers, all_logits).eval()
    # Any slot of the cache is a valid write position (a decode step at the last one included); the
    # runtime checks that a write of `new` tokens at it fits (static_cache.py).
    return DecoderIO(module=module, input_names=input_names, output_names=["logits", *present_names],
                     example_inputs=examples, shapes=shapes, manifest_extra={"generation": generation},
                     default_profile=lambda cfg: default_profile(cfg, "static"),
                     value_ranges={"input_ids": (0, vocab), "attention_mask": (0, 2),
                                   "cache_position": (0, max_cache)},
                     onnx_translations={parts["op"]: parts["onnx"]}, min_opset=STATIC_CACHE_OPSET)
