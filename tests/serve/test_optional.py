"""The server is an optional extra: the runtime never imports its libraries, and the CLI works without them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent
SERVER_ONLY = ["starlette", "uvicorn", "fastapi", "pydantic", "prometheus_client", "jinja2", "openai", "httpx"]
BLOCKER = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {set(SERVER_ONLY)!r}:
            raise ImportError(f"blocked for this test: {{name}}")
sys.meta_path.insert(0, Block())
"""


def run_blocked(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(BLOCKER + code)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)


def test_runtime_and_cli_without_the_server_libraries(tmp_path):
    code = """
import sys
import trtcompile.runtime
import trtcompile.runtime.generate
from click.testing import CliRunner
from trtcompile.cli import cli
assert CliRunner().invoke(cli, ["--help"]).exit_code == 0
result = CliRunner().invoke(cli, ["serve", "--help"])
assert result.exit_code == 0 and "--max-batch" in result.output, result.output
result = CliRunner().invoke(cli, ["serve", "somewhere"])
print(result.exit_code, result.output.strip())
leaked = sorted(m for m in sys.modules if m.split('.')[0] in %r)
print(leaked)
""" % SERVER_ONLY
    proc = run_blocked(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("1 error: the server needs the 'serve' extra"), lines
    assert "pip install 'trtcompile[serve]'" in lines[1]
    assert lines[-1] == "[]"
