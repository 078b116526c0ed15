"""The ASGI application: OpenAI's routes over the loaded packages (Starlette).

    POST /v1/chat/completions, /v1/completions   causal-LM packages (stream: true -> server-sent events)
    POST /v1/embeddings                          encoder packages
    GET  /v1/models, /health, /metrics

Every error a client can cause is answered with OpenAI's error body and a 4xx status; a 5xx means a
bug. A request whose client went away is recorded with status 499 (nobody receives it).
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from trtcompile.serve.completion import ClientGone, ClientWatch, Completion, sse
from trtcompile.serve.embeddings import EmbeddingService
from trtcompile.serve.generation import GenerationService
from trtcompile.serve.metrics import ServerMetrics
from trtcompile.serve.protocol import (APIError, ChatCompletionRequest, CompletionRequest, EmbeddingRequest,
                                       parse)
from trtcompile.serve.slots import QueueFull

log = logging.getLogger("trtcompile.serve")


@dataclass
class ServedModel:
    name: str
    path: str
    model: object  # trtcompile.runtime.Model
    service: GenerationService | EmbeddingService
    created: int

    @property
    def kind(self) -> str:
        return "generation" if isinstance(self.service, GenerationService) else "embeddings"

    def card(self) -> dict:
        card = {"id": self.name, "object": "model", "created": self.created, "owned_by": "trtcompile",
                "kind": self.kind, "backend": self.model.backend_name}
        if isinstance(self.service, GenerationService):
            card.update(max_context=self.service.limits.max_context, max_prompt=self.service.limits.max_prompt,
                        slots=self.service.size)
        else:
            card.update(self.service.describe())
        return card


class Server:
    def __init__(self, models: dict[str, ServedModel], metrics: ServerMetrics, api_key: str | None = None):
        self.models, self.metrics, self.api_key = models, metrics, api_key

    def served(self, name: str, kind: str) -> ServedModel:
        served = self.models.get(name)
        if served is None:
            raise APIError(404, f"model '{name}' is not served here; served: {sorted(self.models)} (GET /v1/models)",
                           param="model", code="model_not_found")
        if served.kind != kind:
            other = "/v1/embeddings" if served.kind == "embeddings" else "/v1/chat/completions or /v1/completions"
            raise APIError(400, f"model '{name}' is {'an encoder' if served.kind == 'embeddings' else 'a causal LM'}: "
                                f"use {other}", param="model", code="wrong_model_kind")
        return served

    # --- routes ----------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(self.models)})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=self.metrics.content_type)

    async def list_models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [m.card() for m in self.models.values()]})

    async def get_model(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.models:
            raise APIError(404, f"model '{name}' is not served here; served: {sorted(self.models)}",
                           param="model", code="model_not_found")
        return JSONResponse(self.models[name].card())

    async def chat_completions(self, request: Request) -> Response:
        arrival = time.perf_counter()
        req = parse(await request.body(), ChatCompletionRequest)
        served = self.served(req.model, "generation")
        prompt = served.service.chat_prompt(req.messages)
        field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
        max_tokens = served.service.budget(prompt, req.token_budget, "messages", field)
        return await self._generate(request, served, req, prompt, max_tokens, arrival, chat=True)

    async def completions(self, request: Request) -> Response:
        arrival = time.perf_counter()
        req = parse(await request.body(), CompletionRequest)
        served = self.served(req.model, "generation")
        prompt = served.service.text_prompt(req.prompt)
        max_tokens = served.service.budget(prompt, req.max_tokens, "prompt", default=16)  # OpenAI's default
        return await self._generate(request, served, req, prompt, max_tokens, arrival, chat=False)

    async def _generate(self, request, served: ServedModel, req, prompt: list[int], max_tokens: int,
                        arrival: float, *, chat: bool) -> Response:
        watch = ClientWatch(request)
        stream = None
        try:
            try:
                stream = await watch.race(served.service.start(prompt, max_tokens, temperature=req.temperature,
                                                               top_p=req.top_p, seed=req.seed))
            except QueueFull as exc:
                raise APIError(429, f"the server is at capacity ({exc.waiting} requests waiting for model "
                                    f"'{served.name}''s {served.service.size} slot(s)); retry after "
                                    f"{exc.retry_after} s", code="queue_full", type="rate_limit_error",
                               headers={"Retry-After": str(exc.retry_after)})
            watch.on_gone = stream.cancel
            try:
                first = await watch.race(stream.next())
            except ValueError as exc:  # the runtime's InputError: a request the checks above let through
                raise APIError(400, str(exc), param="messages" if chat else "prompt", code="invalid_request")
            if first is None:
                raise RuntimeError("the runtime produced no token")
            completion = Completion(served.service, stream, len(prompt), max_tokens, req.stop_strings, arrival)
            if req.stream:
                body = self._events(completion, first, served.name, chat, req.include_usage, watch)
                watch = None  # the event stream owns it now
                return StreamingResponse(body, media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            text = "".join([d async for d in completion.deltas(first)])
            return JSONResponse(self._body(completion, served.name, chat, text))
        finally:
            if watch is not None:
                watch.close()
                if stream is not None:
                    stream.cancel()

    def _body(self, completion: Completion, model: str, chat: bool, text: str) -> dict:
        choice = {"index": 0, "finish_reason": completion.finish_reason, "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
                "model": model, "choices": [choice], "usage": completion.usage()}

    async def _events(self, completion: Completion, first: int, model: str, chat: bool, include_usage: bool,
                      watch: ClientWatch):
        head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
                "object": "chat.completion.chunk" if chat else "text_completion", "created": int(time.time()),
                "model": model}

        def chunk(text: str | None, finish: str | None = None, role: bool = False) -> bytes:
            if chat:
                delta = {} if text is None else {"content": text}
                if role:
                    delta = {"role": "assistant", **delta}
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return sse({**head, "choices": [choice], **({"usage": None} if include_usage else {})})

        # The per-token event is this template with the text spliced in: one json.dumps of a string
        # instead of the whole event, on the path every token takes.
        marker = "\u0000TEXT\u0000"
        before, after = chunk(marker).decode().split(json.dumps(marker))
        before, after = before.encode(), after.encode()

        def text_chunk(text: str) -> bytes:
            return before + json.dumps(text, ensure_ascii=False).encode() + after

        try:
            first_chunk = True
            async for delta in completion.deltas(first):
                if first_chunk:
                    yield chunk(delta, role=True)
                    first_chunk = False
                elif delta:
                    yield text_chunk(delta)
            yield chunk(None, completion.finish_reason)
            if include_usage:
                yield sse({**head, "choices": [], "usage": completion.usage()})
        except Exception as exc:  # mid-stream: the status is sent; say it in the stream, then end it
            log.exception("generation failed mid-stream")
            yield sse({"error": {"message": f"generation failed: {exc}", "type": "server_error",
                                  "param": None, "code": None}})
        finally:
            completion.stream.cancel()
            watch.close()
        yield b"data: [DONE]\n\n"

    async def embeddings(self, request: Request) -> Response:
        req = parse(await request.body(), EmbeddingRequest)
        served = self.served(req.model, "embeddings")
        service: EmbeddingService = served.service
        if req.dimensions is not None and req.dimensions != service.dimensions:
            raise APIError(400, f"'dimensions' = {req.dimensions}: model '{served.name}' gives {service.dimensions} "
                                f"(no truncation); leave it out", param="dimensions", code="invalid_value")
        rows = service.token_rows(req.rows())
        watch = ClientWatch(request)
        try:
            vectors = await watch.race(service.embed(rows))
        finally:
            watch.close()
        data = []
        for i, v in enumerate(vectors):
            value = base64.b64encode(v.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" \
                else v.tolist()
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(len(r) for r in rows)
        return JSONResponse({"object": "list", "data": data, "model": served.name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


# --- error handling, authentication, per-status counting -------------------------------------------


async def _api_error(request: Request, exc: APIError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = {404: f"no route {request.url.path}; see GET /v1/models",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(exc.status_code, str(exc.detail))
    return JSONResponse(APIError(exc.status_code, message).body(), status_code=exc.status_code, headers=exc.headers)


async def _client_gone(request: Request, exc: ClientGone) -> Response:
    return Response(status_code=499)


async def _bug(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s", request.url.path)
    return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error").body(),
                        status_code=500)


class Guard:
    """Pure ASGI middleware (no per-chunk overhead on streams): API key, and requests counted by status."""

    def __init__(self, app, metrics: ServerMetrics, api_key: str | None, endpoints: set[str]):
        self.app, self.metrics, self.endpoints = app, metrics, endpoints
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        endpoint = path if path in self.endpoints else "other"
        status = [500]

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.expected and path.startswith("/v1/") and not self._authorized(scope):
                error = APIError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>' "
                                      "with the key the server was started with (--api-key)",
                                 code="invalid_api_key")
                response = JSONResponse(error.body(), status_code=401, headers={"WWW-Authenticate": "Bearer"})
                return await response(scope, receive, counted_send)
            await self.app(scope, receive, counted_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()

    def _authorized(self, scope) -> bool:
        got = dict(scope["headers"]).get(b"authorization", b"")
        return hmac.compare_digest(got, self.expected)


def create_app(models: dict[str, ServedModel], metrics: ServerMetrics | None = None,
               api_key: str | None = None) -> Guard:
    metrics = metrics or ServerMetrics()
    server = Server(models, metrics, api_key)
    routes = [
        Route("/health", server.health, methods=["GET"]),
        Route("/metrics", server.metrics_text, methods=["GET"]),
        Route("/v1/models", server.list_models, methods=["GET"]),
        Route("/v1/models/{name:path}", server.get_model, methods=["GET"]),
        Route("/v1/chat/completions", server.chat_completions, methods=["POST"]),
        Route("/v1/completions", server.completions, methods=["POST"]),
        Route("/v1/embeddings", server.embeddings, methods=["POST"]),
    ]

    @asynccontextmanager
    async def lifespan(app):
        yield
        for served in models.values():  # after uvicorn drained the requests in flight
            served.service.close()
            served.model.close()

    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={
        APIError: _api_error, HTTPException: _http_error, ClientGone: _client_gone, Exception: _bug})
    app.state.server = server
    endpoints = {r.path for r in routes if "{" not in r.path}
    return Guard(app, metrics, api_key, endpoints)
