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
