"""Writing a package: the swap into OUT is atomic (fault injected between its steps), a killed
compile's leftovers are cleaned by the next one, and permissions follow the umask."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trtcompile.package import PackageWriter, exchange, recover
from trtcompile.runtime.manifest import read_manifest

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def source_package(tiny_bert_package) -> Path:
    return tiny_bert_package


# Writes a copy of SRC into OUT through PackageWriter, its model name set to MARK; FAULT (optional)
# kills the process (no cleanup, like SIGKILL or a power cut) at one step of the swap.
WRITE_COPY = textwrap.dedent("""
    import json, os, shutil, sys
    from pathlib import Path
    import trtcompile.package as package

    src, out, mark, fault = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    if fault == "after-exchange":
        real = package.exchange
        def exchange(a, b):
            assert real(a, b)
            os._exit(9)
        package.exchange = exchange
    elif fault == "between-renames":  # a machine without RENAME_EXCHANGE, killed after 'old aside'
        package.exchange = lambda a, b: False
        real_rename, calls = os.rename, []
        def rename(a, b):
            calls.append(a)
            if len(calls) == 2:
                os._exit(9)
            real_rename(a, b)
        package.os.rename = rename
    elif fault == "while-writing":
        pass
    with package.PackageWriter(out) as pkg:
        for f in src.rglob("*"):
            if f.is_file() and f.name != "manifest.json":
                shutil.copyfile(f, pkg.path(f.relative_to(src).as_posix()))
        if fault == "while-writing":
            os._exit(9)
        manifest = json.loads((src / "manifest.json").read_text())
        manifest["model"]["name"] = mark
        pkg.write_manifest(manifest)
        pkg.commit()
""")


def write_copy(src: Path, out: Path, mark: str, fault: str = "none") -> int:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-c", WRITE_COPY, str(src), str(out), mark, fault], env=env).returncode


def hidden(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_exchange_swaps_two_directories(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("renameat2(RENAME_EXCHANGE) is Linux-only; elsewhere the rename-and-recover path is used")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b" / "x").write_text("b")
    if not exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("this file system cannot exchange (the rename-and-recover path is tested below)")
    assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"


def test_killed_right_after_the_exchange_leaves_the_new_package(source_package, tmp_path):
    out = tmp_path / "out"
    assert write_copy(source_package, out, "old") == 0
    assert write_copy(source_package, out, "new", fault="after-exchange") == 9
    assert read_manifest(out).data["model"]["name"] == "new"  # complete and in place
    assert [n.split("-")[0] for n in hidden(tmp_path)] == [".out.partial"]  # the old one, not yet removed
    assert write_copy(source_package, out, "newer") == 0  # the next compile removes it
    assert read_manifest(out).data["model"]["name"] == "newer" and hidden(tmp_path) == []


def test_killed_between_the_two_renames_is_recovered(source_package, tmp_path):
    """Without an atomic exchange OUT is missing for a moment; the next compile puts the old one back."""
    out = tmp_path / "out"
    assert write_copy(source_package, out, "old") == 0
    assert write_copy(source_package, out, "new", fault="between-renames") == 9
    assert not out.exists()
    assert recover(out) is not None
    assert read_manifest(out).data["model"]["name"] == "old" and hidden(tmp_path) == []


def test_next_compile_recovers_then_replaces(source_package, tmp_path):
    out = tmp_path / "out"
    assert write_copy(source_package, out, "old") == 0
    assert write_copy(source_package, out, "new", fault="between-renames") == 9
    assert write_copy(source_package, out, "newer") == 0
    assert read_manifest(out).data["model"]["name"] == "newer" and hidden(tmp_path) == []


def test_stale_partial_is_removed_but_a_live_one_is_kept(source_package, tmp_path):
    out = tmp_path / "out"
    assert write_copy(source_package, out, "killed", fault="while-writing") == 9
    (stale,) = hidden(tmp_path)
    assert (tmp_path / stale / "model.onnx").is_file()  # a killed compile left a whole model behind
    with PackageWriter(out) as live:  # a compile now running beside it: its directory must survive
        assert not (tmp_path / stale).exists()
        assert write_copy(source_package, out, "other") == 0
        assert live.tmp.is_dir()
    assert hidden(tmp_path) == []


@pytest.mark.parametrize("umask, dir_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600),
                                                        (0o002, 0o775, 0o664)])
def test_package_permissions_follow_the_umask(source_package, tmp_path, umask, dir_mode, file_mode):
    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        with PackageWriter(out) as pkg:
            shutil.copyfile(source_package / "model.onnx", pkg.path("model.onnx"))
            shutil.copyfile(source_package / "profile.yaml", pkg.path("profile.yaml"))
            pkg.write_manifest(json.loads((source_package / "manifest.json").read_text()))
            pkg.commit()
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == dir_mode
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {file_mode}
