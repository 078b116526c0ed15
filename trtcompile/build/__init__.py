"""TensorRT engine building: `engine_unavailable_reason()` first, then `build_engines(...)`.

Importing this package does not import tensorrt; that happens only when a build starts.
"""

from trtcompile.build.engine import build_engines, engine_unavailable_reason

__all__ = ["build_engines", "engine_unavailable_reason"]
