"""One causal-LM package behind the server: prompts checked against its limits, model.stream() run
on worker threads, tokens handed to the event loop.

How many requests decode at once is the runtime's business. A package whose Model says how many
requests it decodes together (`model.slots`: static-cache packages on the continuous-batching
runtime) gets min(slots, --max-batch) worker threads, each iterating its own `model.submit()`
request; the runtime batches them step by step. A package without slots (the runtime before
continuous batching, or a concat-cache package) serves one `model.stream()` at a time, so one
worker thread does, under a lock, and the rest queue. Either way the server's admission
(slots.py) bounds the queue in front, and never hands the runtime more requests than it has
slots, so none waits inside the runtime.

A client that goes away, or a stop string that matched, cancels its request: a runtime request's
cancel() frees its slot at the runtime's next step; a stream() generator is closed by the worker
after the step in flight (which frees the cache); then the server's slot goes to the next request
in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from trtcompile.serve.protocol import APIError
from trtcompile.serve.slots import Slots

_END = object()


def runtime_slots(model) -> int | None:
    """How many stream() calls the runtime serves concurrently on this model, or None for one at a time."""
    slots = getattr(model, "slots", None)
    return int(slots) if isinstance(slots, int) and slots > 0 else None


@dataclass(frozen=True)
class Limits:
    max_prompt: int     # tokens one prompt may have
    max_context: int    # prompt + new tokens

    @classmethod
    def of(cls, model) -> "Limits":
        """From the package's buckets (and the manifest's max_context where it records one), or, for a
        static-cache package, its cache length.

        Decode steps read the cache up to prompt + new - 2 tokens, so prompt + new tokens must stay
        within the decode bucket's past length + 1; the prompt itself within a batch-1 prefill bucket.
        """
        gen = model.manifest.data.get("generation") or {}
        if gen.get("kv_cache") == "static" and gen.get("max_cache"):
            # The static cache prefills long prompts in chunks: one row of the cache is the limit.
            cache = int(gen["max_cache"])
            return cls(max_prompt=cache, max_context=cache)
        buckets = model.buckets
        prefill = [b.dims["sequence"][2] for b in buckets
                   if b.dims.get("past_sequence", (0, 0, 0))[0] == 0 and b.dims.get("batch", (1, 1, 1))[0] <= 1]
        decode = [b.dims["past_sequence"][2] + 1 for b in buckets
                  if "past_sequence" in b.dims and b.dims.get("sequence", (1, 1, 1))[0] <= 1]
        context = max(decode, default=0)
        recorded = (model.manifest.data.get("generation") or {}).get("max_context")
        if recorded:
            context = min(context, int(recorded)) if context else int(recorded)
        return cls(max_prompt=min(max(prefill, default=0), context), max_context=context)


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


class TokenStream:
    """One request's tokens: put() by a worker thread, read on the event loop.

    The worker wakes the event loop only when the reader is waiting for a token (not once per
    token): a wake-up is a syscall that hands the GIL over, so when the loop lags behind, tokens
    pile up and go out together instead of each costing two thread switches.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: deque = deque()
        self.waiter: asyncio.Future | None = None
        self.lock = threading.Lock()
        self.cancelled = False  # read by the worker after every step
        self.on_cancel = None   # the runtime request's cancel(), where there is one

    def put(self, item) -> None:
        with self.lock:
            self.items.append(item)
            waiter, self.waiter = self.waiter, None
        if waiter is not None:
            self.loop.call_soon_threadsafe(_wake, waiter)

    def cancel(self) -> None:
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()  # thread-safe in the runtime: a flag its scheduler reads each step

    async def _get(self):
        with self.lock:
            if self.items:
                return self.items.popleft()
            waiter = self.waiter = self.loop.create_future()
        await waiter
        with self.lock:
            return self.items.popleft()

    async def next(self):
        """The next token id, or None at the end; re-raises the worker's exception."""
        item = await self._get()
        if item is _END:
            with self.lock:
                self.items.appendleft(_END)  # later calls see the end too
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def ready(self) -> list[int]:
        """Tokens already waiting, without blocking (to send several in one write)."""
        out = []
        with self.lock:
            while self.items and isinstance(self.items[0], int):
                out.append(self.items.popleft())
        return out


class GenerationService:
    def __init__(self, name: str, model, tokenizer, metrics, *, max_batch: int, max_queue: int):
        self.name, self.model, self.tokenizer, self.metrics = name, model, tokenizer, metrics
        gen = model.manifest.data["generation"]
        self.limits = Limits.of(model)
        stops = set(gen.get("eos_token_id") or [])
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            stops.add(tokenizer.eos_token_id)  # chat models end a turn with the tokenizer's eos
        self.stop_ids = sorted(int(s) for s in stops)
        concurrent = runtime_slots(model)
        self.size = min(max_batch, concurrent) if concurrent else 1
        self.serial = contextlib.nullcontext() if concurrent else threading.Lock()
        # model.submit(): one request with its own cancel(); the runtimes with slots have it.
        self.submit = bool(concurrent) and callable(getattr(model, "submit", None))
        self.executor = ThreadPoolExecutor(self.size, thread_name_prefix=f"decode-{name}")
        self.slots = Slots(self.size, max_queue, on_change=self._gauges)
        metrics.slots_total.labels(name).set(self.size)
        # Labelled children looked up once: these are hit per token.
        self.ttft, self.tpot = metrics.ttft.labels(name), metrics.tpot.labels(name)
        self.generated = metrics.generated.labels(name)

    def _gauges(self, slots: Slots) -> None:
        self.metrics.slots_in_use.labels(self.name).set(slots.in_use)
        self.metrics.queue_depth.labels(self.name).set(len(slots.waiting))

    # --- prompts ---------------------------------------------------------------------------------

    def chat_prompt(self, messages) -> list[int]:
        tok = self.tokenizer
        if tok is None or not tok.chat_template:
            what = "no tokenizer" if tok is None else "no chat template in its tokenizer"
            raise APIError(400, f"model '{self.name}' has {what}; use /v1/completions with a prompt "
                                f"(text or token ids) instead", param="messages", code="no_chat_template")
        try:
            text = tok.render_chat([{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                                    for m in messages])
        except Exception as exc:  # the template's own raise_exception, or a template error
            raise APIError(400, f"the chat template refused these messages: {exc}", param="messages",
                           code="chat_template_error") from None
        return tok.encode(text, add_special_tokens=False)

    def text_prompt(self, prompt) -> list[int]:
        if isinstance(prompt, list):
            vocab = (self.model.manifest.data.get("generation") or {}).get("vocab_size")
            bad = [t for t in prompt if t < 0 or (vocab and t >= vocab)]
            if bad:
                raise APIError(400, f"'prompt' holds token id {bad[0]}, outside the vocabulary 0..{vocab - 1}",
                               param="prompt", code="invalid_value")
            return list(prompt)
        if self.tokenizer is None:
            raise APIError(400, f"model '{self.name}' has no tokenizer; send the prompt as token ids "
                                f"(a list of integers)", param="prompt", code="no_tokenizer")
        return self.tokenizer.encode(prompt)

    def budget(self, prompt_ids: list[int], max_tokens: int | None, prompt_field: str,
               budget_field: str = "max_tokens", default: int | None = None) -> int:
        """max_tokens to use; APIError(400) naming the field and the limit when it does not fit."""
        lim, n = self.limits, len(prompt_ids)
        if n > lim.max_prompt:
            raise APIError(400, f"the prompt has {n} tokens; model '{self.name}' takes at most {lim.max_prompt} "
                                f"(its prefill bucket); shorten '{prompt_field}'", param=prompt_field,
                           code="context_length_exceeded")
        room = lim.max_context - n
        if room < 1:
            raise APIError(400, f"the prompt has {n} tokens, which leaves no room for new tokens in model "
                                f"'{self.name}''s context of {lim.max_context}; shorten '{prompt_field}'",
                           param=prompt_field, code="context_length_exceeded")
        if max_tokens is None:
            return min(room, default) if default else room
        if max_tokens > room:
            raise APIError(400, f"'{budget_field}' = {max_tokens} is beyond the KV cache: prompt {n} + {max_tokens} "
                                f"new tokens > model '{self.name}''s context of {lim.max_context} tokens; ask for "
                                f"at most {room}", param=budget_field, code="context_length_exceeded")
        return max_tokens

    # --- generation ------------------------------------------------------------------------------

    async def start(self, prompt_ids: list[int], max_tokens: int, *, temperature: float, top_p: float,
                    seed: int | None) -> TokenStream:
        """Wait for a slot (QueueFull when the queue is full), then start generating on a worker."""
        await self.slots.acquire()
        loop = asyncio.get_running_loop()
        stream = TokenStream(loop)
        options = dict(do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
                       top_p=top_p, seed=seed, stop_tokens=self.stop_ids)
        started = time.monotonic()
        try:
            work = loop.run_in_executor(self.executor, self._produce, stream, prompt_ids, max_tokens, options)
        except BaseException:
            self.slots.release()
            raise
        work.add_done_callback(lambda _: self.slots.release(time.monotonic() - started))
        self.metrics.prompt_tokens.labels(self.name).inc(len(prompt_ids))
        return stream

    def _produce(self, stream: TokenStream, prompt_ids, max_tokens: int, options: dict) -> None:
        try:
            if self.submit:
                return self._produce_request(stream, prompt_ids, max_tokens, options)
            with self.serial:
                if stream.cancelled:
                    return
                steps = self.model.stream(np.asarray([prompt_ids], np.int64), max_new_tokens=max_tokens, **options)
                try:
                    for step in steps:
                        stream.put(int(step[0]))
                        if stream.cancelled:
                            break
                finally:
                    steps.close()  # frees the runtime's cache row now, not when garbage-collected
        except BaseException as exc:  # handed to the request, which answers it
            stream.put(exc)
        finally:
            stream.put(_END)

    def _produce_request(self, stream: TokenStream, prompt_ids, max_tokens: int, options: dict) -> None:
        """The continuous-batching runtime's per-request API: its cancel() frees the slot at the next step."""
        request = self.model.submit(np.asarray(prompt_ids, np.int64), max_tokens, **options)
        stream.on_cancel = request.cancel
        if stream.cancelled:
            request.cancel()
        for token in request:
            stream.put(int(token))
            if stream.cancelled:
                break

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)
