"""`trtcompile serve OUT`: an OpenAI-compatible server over one or more packages (trtcompile/serve/).

Registered by cli.py (`cli.add_command(serve)`); the server's libraries are imported only when the
command runs, so `trtcompile --help` works without the `serve` extra.
"""

from __future__ import annotations

from pathlib import Path

import click

from trtcompile.cli_errors import command_options


def parse_models(package: Path | None, models: tuple[str, ...], name: str | None) -> dict[str, Path]:
    from trtcompile.errors import UserError

    served: dict[str, Path] = {}
    if package is not None:
        served[name or package.resolve().name] = package
    for spec in models:
        key, sep, path = spec.partition("=")
        if not sep or not key or not path:
            raise UserError(f"--model {spec!r} is not NAME=OUT", hint="e.g. --model llama=out/llama")
        if key in served:
            raise UserError(f"model name {key!r} is given twice", hint="give each package its own NAME")
        served[key] = Path(path)
    if not served:
        raise UserError("no package to serve", hint="trtcompile serve OUT, or --model NAME=OUT (repeatable)")
    return served


@click.command()
@click.argument("package", type=click.Path(path_type=Path), required=False)
@click.option("--model", "models", multiple=True, metavar="NAME=OUT", help="Serve this package as NAME (repeatable).")
@click.option("--name", help="Model name for OUT in requests (default: OUT's directory name).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--backend", type=click.Choice(("auto", "tensorrt", "onnxruntime")), default="auto", show_default=True)
@click.option("--max-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Generations decoded at once (when the runtime batches), rows per embedding run.")
@click.option("--max-queue", type=click.IntRange(min=0), default=64, show_default=True,
              help="Requests waiting for a slot; beyond it: 429 with Retry-After.")
@click.option("--api-key", envvar="TRTCOMPILE_API_KEY", help="Require 'Authorization: Bearer KEY' on /v1/* "
              "(also $TRTCOMPILE_API_KEY).")
@click.option("--batch-window-ms", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Embeddings: how long the first input waits for others to share its run.")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads per model.")
@click.option("--spin-us", type=click.IntRange(min=0), help="ONNX Runtime: microseconds an idle thread spins for "
              "the next op during a run (0: never spin; default: the runtime's short spin).")
@click.option("--huge-pages/--no-huge-pages", default=True, show_default=True,
              help="ONNX Runtime: put each model's weights on 2 MiB pages after loading (Linux THP; decode streams "
                   "them every step).")
@click.option("--drain-timeout", type=click.FloatRange(min=0), default=30.0, show_default=True,
              help="Seconds SIGTERM waits for requests in flight.")
@click.option("--log-level", type=click.Choice(("critical", "error", "warning", "info", "debug")), default="info",
              show_default=True)
@command_options
def serve(package, models, name, host, port, backend, max_batch, max_queue, api_key, batch_window_ms, threads,
          spin_us, huge_pages, drain_timeout, log_level):
    """Serve packages over OpenAI's HTTP API: chat/completions (LMs), embeddings (encoders)."""
    from trtcompile.errors import UserError

    try:
        from trtcompile.serve import ServeSettings, load_models, run_server
        import starlette, uvicorn, prometheus_client  # noqa: F401,E401  (the extra's libraries, checked up front)
    except ImportError as exc:
        raise UserError(f"the server needs the 'serve' extra ({exc})", hint="pip install 'trtcompile[serve]'")
    settings = ServeSettings(host=host, port=port, backend=backend, max_batch=max_batch, max_queue=max_queue,
                             api_key=api_key, drain_timeout=drain_timeout, log_level=log_level,
                             threads=threads, spin_us=spin_us, huge_pages=huge_pages,
                             batch_window_ms=batch_window_ms)
    served, metrics = load_models(parse_models(package, models, name), settings)
    for m in served.values():
        card = m.card()
        if m.kind == "generation":
            concurrency = (f"{card['slots']} at a time" if card["slots"] > 1 else
                           "one request at a time (this runtime has no slots; the rest queue)")
            click.echo(f"{m.name}: causal LM on {card['backend']}, context {card['max_context']}, {concurrency}")
        else:
            click.echo(f"{m.name}: encoder on {card['backend']}, {card['pooling']}-pooled, normalized, "
                       f"{card['dimensions']} dims, up to {card['max_input_tokens']} tokens per input")
    click.echo(f"serving on http://{host}:{port}/v1 (SIGTERM/Ctrl-C drains requests in flight, then exits)")
    run_server(served, metrics, settings)
