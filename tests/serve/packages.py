"""Tiny packages for the server tests, each with a tokenizer (and the LM with a chat template).

The Llama is tests/tiny_models.py's, with max_position_embeddings raised to 2048 so the default
profile's decode bucket allows 2000-token generations: long enough (seconds) that a test can
disconnect or send SIGTERM in the middle of one.
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = 128
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}assistant {% endif %}")


def word_tokenizer(specials: list[str], post_template: str | None = None):
    """A whitespace word-level tokenizer: the specials first, then 'user', 'assistant', 'system', w<i>."""
    import tokenizers

    vocab = {tok: i for i, tok in enumerate(specials)}
    for word in ("user", "assistant", "system"):
        vocab[word] = len(vocab)
    vocab.update({f"w{i}": i for i in range(len(vocab), WORDS)})
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token=specials[0]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.add_special_tokens(specials)
    if post_template:
        tok.post_processor = tokenizers.processors.TemplateProcessing(
            single=post_template, special_tokens=[(s, vocab[s]) for s in specials if s in post_template])
    return tok


def llama_checkpoint(directory: Path) -> Path:
    import torch

    from tiny_models import _configs

    config, cls = _configs()["llama"]
    config.max_position_embeddings = 2048
    torch.manual_seed(0)
    cls(config).eval().save_pretrained(directory)
    word_tokenizer(["<pad>", "<s>", "</s>"]).save(str(directory / "tokenizer.json"))  # ids 0, 1, 2 as in the config
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "chat_template": CHAT_TEMPLATE}))
    return directory


def bert_checkpoint(directory: Path) -> Path:
    from tiny_models import save_checkpoint

    save_checkpoint("bert", directory)
    word_tokenizer(["[PAD]", "[CLS]", "[SEP]"], "[CLS] $A [SEP]").save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "cls_token": "[CLS]",
        "sep_token": "[SEP]"}))
    return directory


def compile_packages(root: Path) -> dict[str, Path]:
    from trtcompile.compile import compile_package

    data = Path(__file__).parent.parent / "data"
    out = {"llama": root / "llama-pkg", "bert": root / "bert-pkg"}
    compile_package(str(llama_checkpoint(root / "llama-ck")), out["llama"])
    compile_package(str(bert_checkpoint(root / "bert-ck")), out["bert"], profile_path=data / "tiny-encoder.yaml")
    return out
