"""Moved to trtcompile.graph.context (shared with quantize/); kept so existing imports keep working."""

from trtcompile.graph.context import ModelInfo, PassContext  # noqa: F401
