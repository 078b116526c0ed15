"""The runtime is what edge services install: it must import and run a package with torch, onnx,
transformers and the compiler's libraries absent. And `trtcompile --help` must work without them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from trtcompile.compile import compile_package

ROOT = Path(__file__).parent.parent.parent
DATA = ROOT / "tests" / "data"
COMPILER_ONLY = ["torch", "onnx", "onnx_graphsurgeon", "onnxscript", "polygraphy", "transformers", "yaml",
                 "tensorrt", "rich"]

# A meta-path finder that makes the listed top-level packages unimportable, as on an edge box.
BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            raise ImportError(f"blocked for this test: {{name}}")
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str, blocked: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(BLOCKER.format(blocked=set(blocked)) + code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)


def test_runtime_runs_a_package_without_compiler_imports(checkpoint, tmp_path):
    package = tmp_path / "pkg"
    compile_package(str(checkpoint("bert")), package, profile_path=DATA / "tiny-encoder.yaml")
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 128, (2, 12)), "attention_mask": np.ones((2, 12), np.int64),
             "token_type_ids": np.zeros((2, 12), np.int64)}
    np.savez(tmp_path / "feeds.npz", **feeds)

    code = f"""
import numpy as np, sys
import trtcompile.runtime as rt
feeds = dict(np.load({str(tmp_path / 'feeds.npz')!r}))
model = rt.load({str(package)!r})
out = model.run(feeds)["last_hidden_state"]
np.save({str(tmp_path / 'out.npy')!r}, out)
leaked = sorted(m for m in sys.modules if m.split('.')[0] in {COMPILER_ONLY!r})
compiler = sorted(m for m in sys.modules if m.startswith('trtcompile.') and not m.startswith('trtcompile.runtime'))
print(model.backend_name, leaked, compiler)
"""
    proc = run_blocked(code, COMPILER_ONLY, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["onnxruntime", "[]", "[]"]

    from trtcompile.export import load_source

    want = load_source(str(checkpoint("bert"))).reference(feeds)["last_hidden_state"]
    assert np.abs(np.load(tmp_path / "out.npy") - want).max() <= 1e-4


def test_help_without_any_heavy_dependency(tmp_path):
    commands = json.loads(subprocess.run(
        [sys.executable, "-c", "import json; from trtcompile.cli import cli; print(json.dumps(sorted(cli.commands)))"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True).stdout)
    assert {"compile", "export", "optimize", "build", "inspect", "run", "verify", "bench"} <= set(commands)
    code = f"""
from trtcompile.cli import cli
for args in [["--help"]] + [[c, "--help"] for c in {commands!r}]:
    try:
        cli(args, standalone_mode=False)
    except SystemExit as e:
        assert e.code in (0, None), (args, e.code)
import sys
print(sorted(m for m in sys.modules if m.split('.')[0] in {COMPILER_ONLY + ["onnxruntime", "numpy"]!r}))
"""
    proc = run_blocked(code, COMPILER_ONLY + ["onnxruntime", "cuda"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: " in proc.stdout and proc.stdout.strip().splitlines()[-1] == "[]"
