"""`trtcompile serve`: an OpenAI-compatible HTTP server over trtcompile packages.

    from trtcompile.serve import ServeSettings, load_models, run_server
    settings = ServeSettings(port=8000)
    served, metrics = load_models({"llama": "out/llama"}, settings)
    run_server(served, metrics, settings)      # until SIGTERM/SIGINT, which drain first

Needs the `serve` extra (starlette, uvicorn, pydantic, prometheus-client, tokenizers, jinja2); the
runtime itself never imports any of it.
"""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("trtcompile.serve")


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    backend: str = "auto"
    max_batch: int = 8          # concurrent generations (slots) / rows per embedding run, at most
    max_queue: int = 64         # requests waiting for a slot before 429
    api_key: str | None = None
    drain_timeout: float = 30.0  # seconds SIGTERM waits for requests in flight
    batch_window_ms: float = 0.0  # embeddings: the first input waits this long for others to share its run
    threads: int | None = None   # ONNX Runtime intra-op threads per model (None: ORT's default)
    spin_us: int | None = None   # ONNX Runtime: how long idle threads spin during a run (None: the runtime's default)
    huge_pages: bool = True      # ONNX Runtime: weights on 2 MiB pages after loading (runtime/huge_pages.py)
    log_level: str = "info"


def load_models(packages: dict[str, str | Path], settings: ServeSettings, metrics=None) -> dict:
    """({name: ServedModel}, metrics): causal LMs get a GenerationService, encoders an EmbeddingService."""
    from trtcompile import runtime
    from trtcompile.serve.app import ServedModel
    from trtcompile.serve.embeddings import EmbeddingService
    from trtcompile.serve.generation import GenerationService
    from trtcompile.serve.metrics import ServerMetrics
    from trtcompile.serve.text import find_tokenizer

    metrics = metrics or ServerMetrics()
    served = {}
    for name, path in packages.items():
        model = runtime.load(path, backend=settings.backend, **_backend_options(path, settings))
        tokenizer = find_tokenizer(model.manifest)
        if model.manifest.data.get("generation"):
            service = GenerationService(name, model, tokenizer, metrics, max_batch=settings.max_batch,
                                        max_queue=settings.max_queue)
        else:
            try:
                service = EmbeddingService(name, model, tokenizer, metrics, max_batch=settings.max_batch,
                                           window=settings.batch_window_ms / 1e3)
            except ValueError as exc:
                model.close()
                raise runtime.PackageError(f"package {str(path)!r} cannot be served: {exc}; the server takes "
                                           f"causal-LM packages and text-encoder packages") from None
        served[name] = ServedModel(name, str(path), model, service, int(time.time()))
    return served, metrics


def _backend_options(path, settings: ServeSettings) -> dict:
    """threads, spin_us and huge_pages are ONNX Runtime options: pass them only where that backend will run."""
    options = {key: value for key, value in (("threads", settings.threads), ("spinning", settings.spin_us),
                                             ("huge_pages", None if settings.huge_pages else False))
               if value is not None}
    if not options or settings.backend == "tensorrt":
        return {}
    if settings.backend == "auto":
        from trtcompile.runtime import tensorrt_unavailable_reason
        from trtcompile.runtime.manifest import read_manifest

        if not tensorrt_unavailable_reason(read_manifest(path, check_files=False)):
            return {}
    return options


def run_server(served: dict, metrics, settings: ServeSettings, on_ready=None) -> None:
    """Serve until SIGTERM/SIGINT; then stop accepting, finish the requests in flight, and return."""
    import uvicorn

    from trtcompile.serve.app import create_app

    app = create_app(served, metrics, settings.api_key)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=settings.drain_timeout, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    # uvicorn handles SIGTERM/SIGINT itself (graceful drain) and re-raises the signal when done;
    # a no-op handler here makes that re-raise end the process normally (exit 0) after the drain.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
