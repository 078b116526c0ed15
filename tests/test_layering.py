"""Which package may import which: graph helpers have one home (trtcompile/graph/), `passes/` and
`quantize/` do not import each other, and product code never imports a benchmark.

Read from the source (every `import`, module level or inside a function), so a lazy import counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import trtcompile

ROOT = Path(trtcompile.__file__).parent

# quantize_int8's "rest in FP16" runs the FP16 pass itself: the one crossing left until INT8 is a
# step of the pass pipeline (issue #9), when the pipeline runs convert_fp16 after it.
ALLOWED = {("quantize/int8.py", "trtcompile.passes.convert_fp16")}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def crossings(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).is_dir() else [ROOT / package]:
        rel = path.relative_to(ROOT).as_posix()
        for name in sorted(imports_of(path)):
            if name.startswith(forbidden) and (rel, name) not in ALLOWED:
                found.append(f"{rel} imports {name}")
    return found


def test_passes_do_not_import_quantize():
    assert crossings("passes", ("trtcompile.quantize",)) == []


def test_quantize_does_not_import_passes():
    assert crossings("quantize", ("trtcompile.passes",)) == []


def test_graph_helpers_import_neither():
    assert crossings("graph", ("trtcompile.passes", "trtcompile.quantize")) == []


def test_product_code_never_imports_a_benchmark():
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith("bench/") or rel == "cli.py":  # cli.py only dispatches `trtcompile bench NAME`
            continue
        found += [f"{rel} imports {n}" for n in imports_of(path) if n.startswith("trtcompile.bench")]
    assert found == []
