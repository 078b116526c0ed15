"""Fixtures shared by the pass tests: real exports of the tiny families, made once per session.

Exports are the slow part of these tests (dynamo: seconds each), so every test asks this cache
instead of exporting itself. Append fixtures here; do not replace the cache.
"""

from __future__ import annotations

import pytest

from pass_fixtures import export_tiny

@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """tiny_export(family, exporter="dynamo"|"legacy", opset=18, attn="sdpa") -> onnx.ModelProto (cached)."""
    import onnx

    cache: dict = {}
    root = tmp_path_factory.mktemp("exports")

    def get(family: str, exporter: str = "dynamo", opset: int = 18, attn: str = "sdpa"):
        key = (family, exporter, opset, attn)
        if key not in cache:
            cache[key] = export_tiny(family, root / f"{family}-{exporter}{opset}-{attn}.onnx",
                                     exporter=exporter, opset=opset, attn=attn)
        return onnx.load(str(cache[key]))

    return get
