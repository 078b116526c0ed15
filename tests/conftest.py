import os
import sys
from pathlib import Path

import pytest

# Tests never touch the hub; a test that tries to download must fail, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """checkpoint(family, attn="sdpa") -> a saved tiny HF checkpoint directory (cached per session)."""
    from tiny_models import save_checkpoint

    cache: dict = {}

    def make(family: str, attn: str = "sdpa") -> Path:
        key = (family, attn)
        if key not in cache:
            cache[key] = save_checkpoint(family, tmp_path_factory.mktemp(f"{family}-{attn}"), attn)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_bert_package(checkpoint, tmp_path_factory):
    """The tiny BERT checkpoint compiled once per session (tests/data/tiny-encoder.yaml); read-only:
    copy it before changing anything."""
    from trtcompile.compile import compile_package

    out = tmp_path_factory.mktemp("tiny-bert-package") / "bert"
    compile_package(str(checkpoint("bert")), out, profile_path=Path(__file__).parent / "data" / "tiny-encoder.yaml")
    return out
