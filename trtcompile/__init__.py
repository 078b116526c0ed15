"""trtcompile: ahead-of-time compiler from PyTorch transformers to TensorRT engines.

Kept free of imports: `trtcompile --help` and `import trtcompile.runtime` must not pay for
torch, onnx or TensorRT.
"""

__version__ = "0.1.0"
