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
