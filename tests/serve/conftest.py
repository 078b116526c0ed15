"""A live `trtcompile serve` process on 127.0.0.1 (a free port), started and stopped by the tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # live_server, packages

from live_server import LiveServer  # noqa: E402


@pytest.fixture(scope="session")
def serve_packages(tmp_path_factory):
    from packages import compile_packages

    return compile_packages(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(serve_packages, tmp_path_factory):
    """llama and bert, default slots and queue; embeddings wait 10 ms for company (the default, 0, batches
    only what queues during a run: too timing-dependent for a test of batching)."""
    live = LiveServer(["--model", f"llama={serve_packages['llama']}", "--model", f"bert={serve_packages['bert']}",
                       "--batch-window-ms", "10"],
                      tmp_path_factory.mktemp("log") / "server.log")
    yield live
    statuses = live.statuses()
    code = live.stop()
    assert code == 0, live.log.read_text()
    assert not [s for s in statuses if s.startswith("5")], statuses  # no 5xx in any test


@pytest.fixture(scope="module")
def runtime_model(serve_packages):
    from trtcompile import runtime

    with runtime.load(serve_packages["llama"], backend="onnxruntime") as model:
        yield model
