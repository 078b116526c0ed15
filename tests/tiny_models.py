"""Tiny randomly initialised Hugging Face models, saved as checkpoint directories.

Random weights say nothing about accuracy but everything about numerics and graph structure;
each family is cut to 2 layers and hidden size 32-64 so an export takes seconds.
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 128


def _configs():
    import transformers as tf

    common = dict(vocab_size=VOCAB, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    return {
        "bert": (tf.BertConfig(hidden_size=32, max_position_embeddings=128, **common), tf.BertModel),
        "roberta": (tf.RobertaConfig(hidden_size=32, max_position_embeddings=130, pad_token_id=1, **common),
                    tf.RobertaModel),
        "distilbert": (tf.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                           max_position_embeddings=128), tf.DistilBertModel),
        "vit": (tf.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                             num_attention_heads=4, intermediate_size=64), tf.ViTModel),
        "gpt2": (tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                               bos_token_id=1, eos_token_id=2), tf.GPT2LMHeadModel),
        # GQA: 4 query heads share 2 KV heads.
        "llama": (tf.LlamaConfig(hidden_size=64, num_key_value_heads=2, max_position_embeddings=256,
                                 bos_token_id=1, eos_token_id=2, pad_token_id=0, **common),
                  tf.LlamaForCausalLM),
        "mistral": (tf.MistralConfig(hidden_size=64, num_key_value_heads=1, max_position_embeddings=256,
                                     sliding_window=None, bos_token_id=1, eos_token_id=2, **common),
                    tf.MistralForCausalLM),
        "qwen2": (tf.Qwen2Config(hidden_size=64, num_key_value_heads=2, max_position_embeddings=256,
                                 bos_token_id=1, eos_token_id=2, **common), tf.Qwen2ForCausalLM),
    }


FAMILIES = ("bert", "roberta", "distilbert", "vit", "gpt2", "llama", "mistral", "qwen2")


def build(family: str, attn_implementation: str = "sdpa"):
    """The model itself, eval mode, seeded (same weights every call)."""
    config, cls = _configs()[family]
    config._attn_implementation = attn_implementation
    torch.manual_seed(0)
    return cls(config).eval()


def save_checkpoint(family: str, directory: Path, attn_implementation: str = "sdpa") -> Path:
    model = build(family, attn_implementation)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    return directory


def save_gguf(path: Path) -> Path:
    """A tiny random Llama (GQA, 2 layers) as a GGUF file with Q8_0 weights and a byte-level BPE tokenizer.

    Written with the `gguf` package's GGUFWriter, the way llama.cpp's converter lays a Llama out
    (q/k rows permuted for its rotary layout; transformers' loader undoes that), so transformers'
    GGUF loader reads it like a real file.
    """
    import gguf
    import numpy as np

    hidden, heads, kv_heads, layers, ffn = 64, 4, 2, 2, 96  # ffn != VOCAB: shapes tell weights apart
    # Byte-level BPE over a few letters: every single character is a token, plus a few merges.
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["Ġ", ".", ",", "!", "?"]
    merges = ["h e", "l l", "he ll", "o Ġ", "t h", "Ġ t"]
    tokens = ["<unk>", "<s>", "</s>"] + letters + [m.replace(" ", "") for m in merges]
    tokens += [f"<extra_{i}>" for i in range(VOCAB - len(tokens))]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([gguf.TokenType.CONTROL] * 3 + [gguf.TokenType.NORMAL] * (len(tokens) - 3))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                             "{% if add_generation_prompt %}<s>assistant:{% endif %}")
    rng = np.random.default_rng(0)

    def tensor(name, shape, quantize=True):
        values = (rng.standard_normal(shape) * (0.02 if len(shape) > 1 else 0.1)).astype(np.float32)
        if len(shape) == 1:
            values += 1.0  # norm weights near one
        if quantize:
            q = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, values)

    tensor("token_embd.weight", (VOCAB, hidden))  # no output.weight: lm_head is tied to it
    head_dim = hidden // heads
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (hidden,), quantize=False)
        tensor(f"blk.{i}.attn_q.weight", (heads * head_dim, hidden))
        tensor(f"blk.{i}.attn_k.weight", (kv_heads * head_dim, hidden))
        tensor(f"blk.{i}.attn_v.weight", (kv_heads * head_dim, hidden))
        tensor(f"blk.{i}.attn_output.weight", (hidden, heads * head_dim))
        tensor(f"blk.{i}.ffn_norm.weight", (hidden,), quantize=False)
        tensor(f"blk.{i}.ffn_gate.weight", (ffn, hidden))
        tensor(f"blk.{i}.ffn_up.weight", (ffn, hidden))
        tensor(f"blk.{i}.ffn_down.weight", (hidden, ffn))
    tensor("output_norm.weight", (hidden,), quantize=False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
