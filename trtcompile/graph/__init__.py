"""Graph helpers: the one home that `passes/` and `quantize/` both import.

    check.py    structural check of a graph between rewrites
    context.py  what a rewrite sees besides the graph (settings, model facts, its report)
    report.py   what a rewrite matched and declined, and why
    session.py  an ONNX Runtime session on an in-memory model (any size)
    types.py    a graph re-imported with every tensor's dtype known

`passes/` and `quantize/` never import each other; both import from here (a test enforces it).
Loading and saving models lives beside it in `trtcompile/onnx_io.py`.
"""
