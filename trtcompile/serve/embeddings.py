"""One encoder package behind /v1/embeddings: inputs from many requests batched into one run.

Pooling: the manifest records none today (the sentence-transformers pooling config is not part of
a package), so every encoder is served the way sentence-transformers serves all-MiniLM-L6-v2
and its kin: the last hidden state, mean-pooled over the attention mask, then L2-normalized. A
manifest that records `"pooling": "cls"` gets the first token's state instead (also normalized).

Batching: one batcher task takes every input queued at that moment and runs them as one padded
batch, as many rows as the bucket for the longest input allows (and at most --max-batch); inputs
that arrive while a run is in flight form the next batch. So under load batches fill by
themselves, and a lone request on an idle server waits for nothing. `window` (--batch-window-ms,
default 0) makes the first input wait for company: it measured +5 ms per lone request at 2 ms
on the shared test machine (asyncio's timer granularity and thread wake-ups), so it is off.
"""

from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from trtcompile.serve.protocol import APIError

POOLINGS = ("mean", "cls")


@dataclass
class _Row:
    ids: list[int]
    future: asyncio.Future


def pool(hidden: np.ndarray, mask: np.ndarray, pooling: str = "mean") -> np.ndarray:
    """[batch, sequence, hidden] -> L2-normalized [batch, hidden] (float32)."""
    if pooling == "cls":
        pooled = hidden[:, 0, :].astype(np.float64)
    else:
        m = mask[..., None].astype(np.float64)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    norm = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norm, 1e-12)).astype(np.float32)


class EmbeddingService:
    def __init__(self, name: str, model, tokenizer, metrics, *, max_batch: int, window: float = 0.0):
        self.name, self.model, self.tokenizer, self.metrics = name, model, tokenizer, metrics
        self.max_batch, self.window = max_batch, window
        names = {s.name for s in model.inputs}
        if "input_ids" not in names or not names <= {"input_ids", "attention_mask", "token_type_ids"}:
            raise ValueError(f"inputs {sorted(names)}: the server embeds text encoders, whose inputs are "
                             f"input_ids, attention_mask and token_type_ids")
        hidden = [s for s in model.outputs if s.name == "last_hidden_state"] or \
                 [s for s in model.outputs if len(s.shape) == 3]
        if not hidden:
            raise ValueError(f"outputs {[s.name for s in model.outputs]}: no [batch, sequence, hidden] output "
                             f"(last_hidden_state) to pool")
        self.output = hidden[0].name
        self.dimensions = int(hidden[0].shape[-1]) if isinstance(hidden[0].shape[-1], int) else None
        self.pooling = model.manifest.data.get("pooling") or "mean"
        if self.pooling not in POOLINGS:
            raise ValueError(f"the manifest's pooling {self.pooling!r} is not one of {POOLINGS}")
        self.input_names = names
        spec = next(s for s in model.inputs if s.name == "input_ids")
        self.vocab = int(spec.value_range[1]) if spec.value_range else None
        self.max_tokens = max(b.dims["sequence"][2] for b in model.buckets if "sequence" in b.dims)
        self.pad_id = 0
        if tokenizer is not None and tokenizer.special_token("pad_token"):
            self.pad_id = tokenizer.token_to_id(tokenizer.special_token("pad_token")) or 0
        self.queue: deque[_Row] = deque()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"embed-{name}")
        self.wakeup: asyncio.Event | None = None
        self.task: asyncio.Task | None = None
        metrics.slots_total.labels(name).set(max_batch)

    def describe(self) -> dict:
        return {"pooling": self.pooling, "normalized": True, "dimensions": self.dimensions,
                "max_input_tokens": self.max_tokens}

    # --- inputs ----------------------------------------------------------------------------------

    def token_rows(self, rows: list) -> list[list[int]]:
        out = []
        for i, row in enumerate(rows):
            if isinstance(row, str):
                if self.tokenizer is None:
                    raise APIError(400, f"model '{self.name}' has no tokenizer; send 'input' as token ids "
                                        f"(a list of integers, or a list of such lists)", param="input",
                                   code="no_tokenizer")
                row = self.tokenizer.encode(row)
            if len(row) > self.max_tokens:
                raise APIError(400, f"'input[{i}]' has {len(row)} tokens; model '{self.name}' takes at most "
                                    f"{self.max_tokens} per input", param="input", code="context_length_exceeded")
            bad = [t for t in row if t < 0 or (self.vocab and t >= self.vocab)]
            if bad:
                raise APIError(400, f"'input[{i}]' holds token id {bad[0]}, outside the vocabulary "
                                    f"0..{self.vocab - 1}", param="input", code="invalid_value")
            if not row:
                raise APIError(400, f"'input[{i}]' has no tokens", param="input", code="invalid_value")
            out.append(list(row))
        return out

    def rows_for(self, length: int) -> int:
        """How many rows of `length` tokens one run may take."""
        fits = [b.dims.get("batch", (1, 1, 1))[2] for b in self.model.buckets
                if b.dims["sequence"][0] <= length <= b.dims["sequence"][2]]
        return min(self.max_batch, max(fits, default=1))

    # --- batching --------------------------------------------------------------------------------

    async def embed(self, rows: list[list[int]]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        if self.task is None:
            self.wakeup = asyncio.Event()
            self.task = loop.create_task(self._batcher())
        futures = [loop.create_future() for _ in rows]
        self.queue.extend(_Row(ids, f) for ids, f in zip(rows, futures))
        self.metrics.queue_depth.labels(self.name).set(len(self.queue))
        self.wakeup.set()
        return list(await asyncio.gather(*futures))

    def _take(self) -> list[_Row]:
        batch: list[_Row] = []
        longest = 0
        while self.queue:
            row = self.queue[0]
            if row.future.done():  # its request went away
                self.queue.popleft()
                continue
            if batch and len(batch) + 1 > self.rows_for(max(longest, len(row.ids))):
                break
            batch.append(self.queue.popleft())
            longest = max(longest, len(row.ids))
        return batch

    async def _batcher(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            # At least one pass of the event loop: requests read in the same pass join this batch.
            await asyncio.sleep(self.window)
            while self.queue:
                batch = self._take()
                self.metrics.queue_depth.labels(self.name).set(len(self.queue))
                if not batch:
                    continue
                self.metrics.slots_in_use.labels(self.name).set(len(batch))
                self.metrics.embedding_batch.labels(self.name).observe(len(batch))
                try:
                    vectors = await loop.run_in_executor(self.executor, self.run, [r.ids for r in batch])
                except Exception as exc:
                    for r in batch:
                        if not r.future.done():
                            r.future.set_exception(exc)
                else:
                    for r, v in zip(batch, vectors):
                        if not r.future.done():
                            r.future.set_result(v)
                self.metrics.slots_in_use.labels(self.name).set(0)

    def run(self, rows: list[list[int]]) -> np.ndarray:
        """Right-pad to the longest row, run once, pool: [len(rows), hidden]."""
        length = max(len(r) for r in rows)
        ids = np.full((len(rows), length), self.pad_id, np.int64)
        mask = np.zeros((len(rows), length), np.int64)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = r
            mask[i, :len(r)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        out = self.model.run({k: v for k, v in feeds.items() if k in self.input_names})
        return pool(out[self.output], mask, self.pooling)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.executor.shutdown(wait=True, cancel_futures=True)
