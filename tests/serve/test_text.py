"""Streaming detokenization and stop strings (serve/text.py) on a byte-level BPE tokenizer, where
one character can span several tokens and a word's leading space belongs to its first token."""

from __future__ import annotations

import pytest

from trtcompile.serve.text import PackageTokenizer, TextAssembler

TEXT = "Grüße aus Köln 🚀🚀 — naïve café, 東京 and STOP here; after the stop comes more text 🙂."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    directory = tmp_path_factory.mktemp("bpe")
    tok = tokenizers.ByteLevelBPETokenizer()
    tok.train_from_iterator(["Grüße aus Köln, naïve café", "and here comes more text"], vocab_size=300,
                            min_frequency=1, show_progress=False)
    tok.save(str(directory / "tokenizer.json"))
    return PackageTokenizer(directory)


def stream(tokenizer, stops: list[str]) -> list[str]:
    text = TextAssembler(tokenizer, stops)
    deltas = []
    for token in tokenizer.encode(TEXT):
        deltas.append(text.add(token))
        if text.stopped:
            break
    deltas.append(text.finish())
    return deltas


def test_deltas_add_up_to_the_decoded_text(tokenizer):
    ids = tokenizer.encode(TEXT)
    assert any(tokenizer.decode([t]).endswith("\ufffd") for t in ids)  # characters do span tokens here
    deltas = stream(tokenizer, [])
    assert "".join(deltas) == tokenizer.decode(ids) == TEXT
    assert all("\ufffd" not in d for d in deltas)


@pytest.mark.parametrize("stops, expected", [
    (["STOP"], TEXT[:TEXT.index("STOP")]),
    (["🚀🚀 —"], TEXT[:TEXT.index("🚀")]),                     # spans several byte tokens
    (["never", "café, 東"], TEXT[:TEXT.index("café")]),       # the earliest of several
    (["not in the text"], TEXT),
])
def test_stop_strings_cut_the_text_before_them(tokenizer, stops, expected):
    deltas = stream(tokenizer, stops)
    assert "".join(deltas) == expected
    emitted = ""
    for d in deltas:  # no delta ever shows part of a stop string that is later cut
        emitted += d
        assert expected.startswith(emitted)


def test_padding_and_truncation_in_tokenizer_json_are_ignored(tmp_path):
    """all-MiniLM-L6-v2's tokenizer.json pads every text to 128 tokens and truncates at 128: mean
    pooling over those pads gave embeddings off by 0.4. The server pads batches itself, and refuses
    (never cuts) an input longer than the package takes."""
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"[PAD]": 0, "[UNK]": 1, **{f"w{i}": i for i in range(2, 50)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok.enable_padding(length=16, pad_id=0, pad_token="[PAD]")
    tok.enable_truncation(max_length=8)
    tok.save(str(tmp_path / "tokenizer.json"))
    text = " ".join(f"w{i}" for i in range(2, 14))  # 12 words
    raw = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(text).ids
    assert raw == list(range(2, 10)) + [0] * 8  # cut at 8, padded to 16
    assert PackageTokenizer(tmp_path).encode(text) == list(range(2, 14))
