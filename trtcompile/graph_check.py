"""Moved to trtcompile.graph.check; kept so existing imports keep working."""

from trtcompile.graph.check import GraphCheckError, check_graph  # noqa: F401
