"""Calibration (and evaluation) data: a user's .npz of input arrays, or text plus the tokenizer.

Either way the result is a list of feed dicts, each a batch that fits one of the profile's
buckets, so calibration sees the shapes the engine will. Everything that can disagree between
the data and the model (a missing input, a dtype, a sequence longer than every bucket, text
without a tokenizer) is a UserError naming the file, the input, the value and the fix.

    .npz:  {input name: array}, first axis = samples; split into batches of the bucket's batch size
    text:  one sentence/paragraph per line (blank lines and lines starting with '#' skipped),
           tokenized with the checkpoint's tokenizer, padded per batch, truncated to the buckets
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from trtcompile.errors import UserError
from trtcompile.runtime.shapes import Bucket, TensorSpec

log = logging.getLogger("trtcompile.quantize")
DEFAULT_BATCH = 8
_TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def load_calibration_data(path: Path, inputs: list[TensorSpec], buckets: list[Bucket],
                          tokenizer_dir: Path | None, num_samples: int) -> list[dict[str, np.ndarray]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"calibration data {str(path)!r} does not exist",
                        hint="pass --calibration-data with a .npz of input arrays or a text file")
    if num_samples < 1:
        raise UserError(f"--calibration-samples is {num_samples}; it must be at least 1",
                        hint="use e.g. --calibration-samples 64")
    if not inputs:
        raise UserError("the model has no inputs to calibrate", hint="check the exported model")
    if path.suffix == ".npz":
        return _from_npz(path, inputs, buckets, num_samples)
    return _from_text(path, inputs, buckets, tokenizer_dir, num_samples)


# ---------------------------------------------------------------------------------------------
def _from_npz(path: Path, inputs: list[TensorSpec], buckets: list[Bucket], num_samples: int):
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"calibration data {str(path)!r} is not a readable .npz: {exc}",
                        hint="write it with numpy.savez(path, input_ids=..., attention_mask=...)") from exc
    names = [s.name for s in inputs]
    for spec in inputs:
        if spec.name not in arrays:
            raise UserError(f"calibration data {str(path)!r} has no array for model input {spec.name!r} "
                            f"(it has {sorted(arrays)})",
                            hint=f"save one array per model input: {names}")
    extra = sorted(set(arrays) - set(names))
    if extra:
        log.warning("calibration data %s: ignoring arrays %s (the model takes %s)", path, extra, names)
    count = None
    for spec in inputs:
        array = arrays[spec.name]
        want = np.dtype(spec.dtype)
        if array.dtype != want:
            same_kind = (np.issubdtype(array.dtype, np.integer) and np.issubdtype(want, np.integer)) or (
                np.issubdtype(array.dtype, np.floating) and np.issubdtype(want, np.floating))
            if not same_kind:
                raise UserError(f"calibration data {str(path)!r}: input {spec.name!r} is {array.dtype}, "
                                f"the model takes {want}",
                                hint=f"save it as {want} (array.astype(np.{want}))")
            arrays[spec.name] = array = array.astype(want)
        if array.ndim != len(spec.shape):
            raise UserError(f"calibration data {str(path)!r}: input {spec.name!r} has shape {list(array.shape)}, "
                            f"the model takes rank {len(spec.shape)} {spec.shape} (first axis = samples)",
                            hint="stack the samples along the first axis, one array per input")
        if count is not None and array.shape[0] != count:
            raise UserError(f"calibration data {str(path)!r}: input {spec.name!r} has {array.shape[0]} samples, "
                            f"{inputs[0].name!r} has {count}", hint="give every input the same number of samples")
        count = array.shape[0]
        for axis, dim in enumerate(spec.shape[1:], start=1):
            _check_dim(path, spec, axis, dim, array.shape[axis], buckets)
    count = min(count or 0, num_samples)
    if count == 0:
        raise UserError(f"calibration data {str(path)!r} holds no samples", hint="save at least one sample")
    batch_dim = inputs[0].shape[0]
    if isinstance(batch_dim, int):  # a static batch axis: only whole batches
        if count < batch_dim:
            raise UserError(f"calibration data {str(path)!r} has {count} samples, fewer than the model's fixed "
                            f"batch of {batch_dim}", hint=f"save at least {batch_dim} samples")
        batch, count = batch_dim, count - count % batch_dim
    else:
        batch = _batch_size(buckets, batch_dim)
    return [{s.name: arrays[s.name][i:min(i + batch, count)] for s in inputs} for i in range(0, count, batch)]


def _check_dim(path, spec: TensorSpec, axis: int, dim, value: int, buckets: list[Bucket]) -> None:
    if isinstance(dim, int):
        if value != dim:
            raise UserError(f"calibration data {str(path)!r}: input {spec.name!r} dimension {axis} is {value}, "
                            f"the model fixes it at {dim}", hint=f"reshape it to {spec.shape}")
        return
    if "+" in str(dim):
        return
    ranges = [b.dims[dim] for b in buckets if dim in b.dims]
    if ranges and not any(lo <= value <= hi for lo, _, hi in ranges):
        allowed = ", ".join(f"{b.name}: {b.dims[dim][0]}..{b.dims[dim][2]}" for b in buckets if dim in b.dims)
        raise UserError(f"calibration data {str(path)!r}: input {spec.name!r} has {dim} = {value}, outside "
                        f"every bucket ({allowed})",
                        hint=f"cut the samples to at most {max(hi for _, _, hi in ranges)} along {dim!r}, "
                             f"or use a profile whose buckets cover {value}")


def _batch_size(buckets: list[Bucket], batch_dim: str) -> int:
    highs = [b.dims[batch_dim][2] for b in buckets if batch_dim in b.dims]
    return max(1, min(DEFAULT_BATCH, max(highs))) if highs else DEFAULT_BATCH


# ---------------------------------------------------------------------------------------------
def _from_text(path: Path, inputs: list[TensorSpec], buckets: list[Bucket], tokenizer_dir: Path | None,
               num_samples: int):
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"calibration data {str(path)!r} is neither a .npz nor UTF-8 text",
                        hint="pass a .npz of input arrays or a UTF-8 text file, one sentence per line") from exc
    texts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not texts:
        raise UserError(f"calibration text {str(path)!r} has no non-empty lines",
                        hint="write one sentence or paragraph per line")
    texts = texts[:num_samples]
    names = {s.name for s in inputs}
    unknown = [s for s in inputs if s.name not in _TOKEN_INPUTS and not _is_past(s)]
    if "input_ids" not in names or unknown:
        bad = unknown[0].name if unknown else sorted(names)[0]
        raise UserError(f"calibration text {str(path)!r} cannot feed model input {bad!r}: text only makes "
                        f"{list(_TOKEN_INPUTS)} (inputs are {sorted(names)})",
                        hint="pass a .npz with one array per model input instead")
    tokenizer = _tokenizer(path, tokenizer_dir)
    spec = next(s for s in inputs if s.name == "input_ids")
    batch_dim, seq_dim = spec.shape[0], spec.shape[1] if len(spec.shape) > 1 else None
    max_len = None
    if isinstance(seq_dim, str):
        highs = [b.dims[seq_dim][2] for b in buckets if seq_dim in b.dims]
        max_len = max(highs) if highs else None
    elif isinstance(seq_dim, int):
        max_len = seq_dim
    batch = _batch_size(buckets, batch_dim) if isinstance(batch_dim, str) else int(batch_dim)
    truncated = 0
    feeds = []
    for start in range(0, len(texts), batch):
        chunk = texts[start:start + batch]
        if isinstance(batch_dim, int) and len(chunk) < batch:
            break
        enc = tokenizer(chunk, padding="max_length" if isinstance(seq_dim, int) else "longest",
                        truncation=max_len is not None, max_length=max_len, return_tensors="np")
        if max_len is not None:
            full = tokenizer(chunk, truncation=False)["input_ids"]
            truncated += sum(len(ids) > max_len for ids in full)
        feeds.append(_token_feed(enc, inputs, buckets))
    if truncated:
        log.warning("calibration text %s: %d lines longer than %d tokens were truncated", path, truncated, max_len)
    if feeds and isinstance(seq_dim, str) and isinstance(batch_dim, str):
        # Lines are short, but a bucket may hold long sequences whose activation ranges (attention
        # sums over many keys) a per-tensor scale must also cover: pack consecutive lines into rows
        # of each bucket's opt length. First, so the held-out split stays natural sentences.
        feeds = _packed_feeds(tokenizer, texts, inputs, buckets, seq_dim, batch) + feeds
    if not feeds:
        raise UserError(f"calibration text {str(path)!r} has {len(texts)} lines, fewer than the model's fixed "
                        f"batch of {batch}", hint=f"give at least {batch} lines")
    return feeds


def _packed_feeds(tokenizer, texts: list[str], inputs: list[TensorSpec], buckets: list[Bucket], seq_dim: str,
                  batch: int) -> list[dict[str, np.ndarray]]:
    """One batch per bucket whose opt length is beyond the natural lines: text packed to that length."""
    natural = max(len(ids) for ids in tokenizer(texts, truncation=False)["input_ids"])
    stream = [tok for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for tok in ids]
    if not stream:
        return []
    feeds = []
    for bucket in buckets:
        length = bucket.dims.get(seq_dim, (0, 0, 0))[1]
        if length <= natural:
            continue
        # Room for the special tokens the tokenizer adds around a row ([CLS] ... [SEP]).
        body = max(1, length - len(tokenizer("", add_special_tokens=True)["input_ids"]))
        rows = []
        for r in range(min(batch, max(1, len(stream) // body))):
            start = (r * body) % len(stream)
            chunk = (stream[start:] + stream)[:body]
            rows.append(tokenizer.decode(chunk))
        enc = tokenizer(rows, padding="max_length", truncation=True, max_length=length, return_tensors="np")
        feeds.append(_token_feed(enc, inputs, buckets))
    return feeds


def _is_past(spec: TensorSpec) -> bool:
    return "past" in spec.name or "cache" in spec.name


def _token_feed(enc, inputs: list[TensorSpec], buckets: list[Bucket]) -> dict[str, np.ndarray]:
    ids = np.asarray(enc["input_ids"])
    mask = np.asarray(enc.get("attention_mask", np.ones_like(ids)))
    batch, seq = ids.shape
    dims = {}
    spec_ids = next(s for s in inputs if s.name == "input_ids")
    if isinstance(spec_ids.shape[0], str):
        dims[spec_ids.shape[0]] = batch
    if len(spec_ids.shape) > 1 and isinstance(spec_ids.shape[1], str):
        dims[spec_ids.shape[1]] = seq
    # A mask over a dim of its own (a static cache's kv_sequence): as wide as the new tokens.
    spec_mask = next((s for s in inputs if s.name == "attention_mask"), None)
    if spec_mask is not None and isinstance(spec_mask.shape[-1], str) and "+" not in spec_mask.shape[-1]:
        dims.setdefault(spec_mask.shape[-1], seq)
    # Other named dims (past_sequence for a KV-cache graph): the smallest any bucket allows.
    for spec in inputs:
        for d in spec.shape:
            for term in str(d).split("+"):
                term = term.strip()
                if isinstance(d, str) and term not in dims and not term.lstrip("-").isdigit():
                    lows = [b.dims[term][0] for b in buckets if term in b.dims]
                    dims[term] = max(0, min(lows)) if lows else 0
    from trtcompile.runtime.shapes import eval_dim

    feed = {}
    for spec in inputs:
        dtype = np.dtype(spec.dtype)
        shape = [eval_dim(d, dims) for d in spec.shape]
        if spec.name == "input_ids":
            feed[spec.name] = ids.astype(dtype)
        elif spec.name == "attention_mask":
            past = shape[-1] - seq
            feed[spec.name] = np.concatenate([np.ones((batch, past), dtype), mask.astype(dtype)], axis=1)
        elif spec.name == "token_type_ids":
            feed[spec.name] = np.asarray(enc.get("token_type_ids", np.zeros_like(ids))).astype(dtype)
        elif spec.name == "position_ids":
            past = dims.get("past_sequence", 0)
            pos = np.clip(np.cumsum(mask, axis=1) - 1, 0, None) + past
            feed[spec.name] = pos.astype(dtype)
        else:  # empty past keys/values
            feed[spec.name] = np.zeros(shape, dtype)
    return feed


def _tokenizer(path: Path, tokenizer_dir: Path | None):
    if tokenizer_dir is None:
        raise UserError(f"calibration text {str(path)!r} needs the model's tokenizer, and this model has no "
                        f"checkpoint directory to load it from",
                        hint="compile from the Hugging Face checkpoint directory, or pass a .npz of token ids")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - missing/broken tokenizer files
        raise UserError(f"calibration text {str(path)!r}: no tokenizer could be loaded from {str(tokenizer_dir)!r} "
                        f"({str(exc).splitlines()[0][:200]})",
                        hint="put tokenizer.json/tokenizer_config.json in the checkpoint directory, "
                             "or pass a .npz of token ids") from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer
