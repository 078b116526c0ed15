"""Read a module's source and list the TensorRT / CUDA runtime attributes it uses.

The full TensorRT cannot be installed on the machines the runtime is written on, so its code is
checked statically: every `trt.X.Y` chain, and every attribute taken on a variable named like a
TensorRT object (`engine.X`, `self.context.X`, ...), must exist in the real bindings.
"""

from __future__ import annotations

import ast
import inspect


def attribute_chains(source: str, call_roots: dict[str, str] | None = None) -> set[tuple[str, ...]]:
    """Every maximal dotted chain, e.g. ('self', 'context', 'set_input_shape').

    call_roots maps a function whose call returns a module to that module's name, so
    `_cudart().cudaFree` reads as ('cudart', 'cudaFree').
    """
    call_roots = call_roots or {}
    tree = ast.parse(source)
    inner = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    chains = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or id(node) in inner:
            continue
        parts, cur = [], node
        while isinstance(cur, ast.Attribute):
            parts.append(cur.attr)
            cur = cur.value
        if isinstance(cur, ast.Name):
            parts.append(cur.id)
        elif isinstance(cur, ast.Call) and isinstance(cur.func, ast.Name) and cur.func.id in call_roots:
            parts.append(call_roots[cur.func.id])
        else:
            continue
        chains.add(tuple(reversed(parts)))
    return chains


def module_uses(chains, root: str) -> set[tuple[str, ...]]:
    """Chains starting at `root` (e.g. 'trt'), without the root."""
    return {c[1:] for c in chains if c[0] == root and len(c) > 1}


def receiver_uses(chains, receivers: dict[str, str]) -> set[tuple[str, str]]:
    """(class name, attribute) for every `<receiver>.attr` where the receiver is a name in `receivers`."""
    found = set()
    for chain in chains:
        for i in range(len(chain) - 1):
            if chain[i] in receivers and (i == 0 or chain[i - 1] == "self"):
                found.add((receivers[chain[i]], chain[i + 1]))
    return found


def missing_in(module, paths) -> list[str]:
    """The dotted paths (tuples of names) that do not resolve on `module`."""
    missing = []
    for path in sorted(paths):
        obj = module
        for name in path:
            if not hasattr(obj, name):
                missing.append(".".join(path))
                break
            obj = getattr(obj, name)
    return missing


def source_of(module) -> str:
    return inspect.getsource(module)
