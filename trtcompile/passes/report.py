"""Moved to trtcompile.graph.report (shared with quantize/); kept so existing imports keep working."""

from trtcompile.graph.report import PassReport  # noqa: F401
