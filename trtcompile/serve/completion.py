"""One generation request on the event loop: its client's presence, and its tokens turned into text.

ClientWatch learns that the client went away (ASGI http.disconnect) so the request can be cancelled
while it waits for a slot, for its first token, or mid-generation; Completion turns the tokens a
worker hands over into text deltas, finish_reason and usage, and records the token metrics.
"""

from __future__ import annotations

import asyncio
import json
import time

from starlette.requests import Request

from trtcompile.serve.generation import GenerationService, TokenStream
from trtcompile.serve.text import TextAssembler


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


class ClientWatch:
    """Learns that a request's client went away (ASGI http.disconnect) and calls `on_gone` once."""

    def __init__(self, request: Request):
        self.gone = asyncio.Event()
        self.on_gone = lambda: None
        self.task = asyncio.create_task(self._watch(request.receive))

    async def _watch(self, receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        self.on_gone()

    async def race(self, awaitable):
        """awaitable's result, or ClientGone if the client leaves first (the awaitable is cancelled)."""
        work = asyncio.ensure_future(awaitable)
        gone = asyncio.ensure_future(self.gone.wait())
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            gone.cancel()
            return work.result()
        work.cancel()
        try:
            await work
        except BaseException:
            pass
        raise ClientGone()

    def close(self) -> None:
        self.task.cancel()


class Completion:
    """One generation request's tokens turned into text, finish_reason and usage, with its metrics."""

    def __init__(self, service: GenerationService, stream: TokenStream, prompt_tokens: int, max_tokens: int,
                 stop_strings: list[str], arrival: float):
        self.service = service
        self.stream, self.prompt_tokens, self.max_tokens = stream, prompt_tokens, max_tokens
        self.text = TextAssembler(self.service.tokenizer, stop_strings) if self.service.tokenizer else None
        self.ids: list[int] = []
        self.finish_reason: str | None = None
        self.arrival = self.last = arrival

    def take(self, tokens: list[int]) -> str:
        """Text these tokens add; sets finish_reason when they end the completion."""
        now = time.perf_counter()
        service = self.service
        if not self.ids:
            service.ttft.observe(now - self.arrival)
            tokens_after_first = len(tokens) - 1
        else:
            tokens_after_first = len(tokens)
        for _ in range(tokens_after_first):  # tokens that arrived together share the gap
            service.tpot.observe((now - self.last) / tokens_after_first)
        self.last = now
        service.metrics.tokens(service.generated, len(tokens))
        delta = []
        for token in tokens:
            if self.finish_reason:
                break
            self.ids.append(token)
            if token in self.service.stop_ids:
                self.finish_reason = "stop"  # the stop token itself is counted, never shown
            elif self.text is not None:
                delta.append(self.text.add(token))
                if self.text.stopped:
                    self.finish_reason = "stop"
            else:
                delta.append(f"{token} ")
            if not self.finish_reason and len(self.ids) >= self.max_tokens:
                self.finish_reason = "length"
        if self.finish_reason:
            self.stream.cancel()  # a stop string: the runtime need not go on
            if self.text is not None:
                delta.append(self.text.finish())
        return "".join(delta)

    async def deltas(self, first: int):
        """Text deltas until the completion ends; each covers every token that was ready."""
        yield self.take([first])
        while not self.finish_reason:
            token = await self.stream.next()
            if token is None:  # the runtime ended without a stop token or the length (it should not)
                self.finish_reason = "length" if len(self.ids) >= self.max_tokens else "stop"
                if self.text is not None:
                    yield self.text.finish()
                return
            yield self.take([token, *self.stream.ready()])

    def usage(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": len(self.ids),
                "total_tokens": self.prompt_tokens + len(self.ids)}


def sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"
