"""Value checks the runtime makes before handing a call to a backend.

Shapes and dtypes are checked by shapes.bucket_for; this adds what a backend would otherwise get
wrong silently or fail on with its own error: token ids outside the manifest's value ranges (a
Gather reads index -1 as the last row and an id >= vocab as a raw ORT "out of range"), and the
options of generate()/stream() (stop tokens, pad id, max_new_tokens) that the decode loop takes
on trust.
"""

from __future__ import annotations

import numbers

import numpy as np

from trtcompile.runtime.shapes import InputError, TensorSpec


class ValueRanges:
    """Integer inputs with a value range [low, high) hold only values inside it.

    Built once per model: the per-call cost is a min and a max per ranged input (a few µs), since
    `run` is on the hot path.
    """

    def __init__(self, inputs: list[TensorSpec]):
        # (name, low, high, unsigned twin of its dtype when low == 0): viewed unsigned, a negative
        # id is larger than any high, so one max() checks both ends (bind_dims checked the dtype).
        self.ranged = [(s.name, s.value_range[0], s.value_range[1],
                        np.dtype(s.dtype.replace("int", "uint")) if s.value_range[0] == 0 and s.dtype.startswith("int")
                        else None)
                       for s in inputs if s.value_range is not None and np.issubdtype(np.dtype(s.dtype), np.integer)]

    def check(self, feeds: dict[str, np.ndarray]) -> None:
        for name, low, high, unsigned in self.ranged:
            array = feeds[name]
            if not array.size:
                continue
            if unsigned is not None and array.dtype.itemsize == unsigned.itemsize:
                if array.view(unsigned).max() >= high:
                    self._fail(name, array, low, high)
            elif array.min() < low or array.max() >= high:
                self._fail(name, array, low, high)

    @staticmethod
    def _fail(name: str, array: np.ndarray, low, high) -> None:
        lo, hi = array.min(), array.max()
        bad = int(lo) if lo < low else int(hi)
        where = tuple(int(i) for i in np.argwhere(array == bad)[0])
        raise InputError(f"input {name!r} holds {bad} at index {list(where)}, outside its range "
                         f"{int(low)}..{int(high) - 1}" + _hint(name))


def check_values(inputs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> None:
    ValueRanges(inputs).check(feeds)


def _hint(name: str) -> str:
    if "ids" in name:
        return "; token ids must be valid for this model's vocabulary (padding too: use the pad or eos id)"
    return "; pass values inside the range the package was compiled for (`trtcompile inspect`)"


def vocab_size(manifest) -> int | None:
    """The model's vocabulary size: the generation section's, else the input_ids value range."""
    gen = manifest.data.get("generation") or {}
    if isinstance(gen.get("vocab_size"), int) and not isinstance(gen["vocab_size"], bool):
        return gen["vocab_size"]
    ids = next((s for s in manifest.inputs if s.name == gen.get("input_ids", "input_ids")), None)
    if ids is not None and ids.value_range is not None and ids.value_range[0] == 0:
        return int(ids.value_range[1])
    return None


def _is_int(value) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, (bool, np.bool_))


def _token(value, what: str, vocab: int | None) -> int:
    if not _is_int(value):
        raise InputError(f"{what} is {value!r} ({type(value).__name__}); pass an integer token id")
    if value < 0 or (vocab is not None and value >= vocab):
        top = f"{vocab - 1}" if vocab is not None else "..."
        raise InputError(f"{what} is {int(value)}, outside this model's vocabulary 0..{top}")
    return int(value)


def generation_options(manifest, input_ids, max_new_tokens, options: dict) -> tuple[int, dict]:
    """max_new_tokens and the generate()/stream() options, checked; stop_tokens as a list of ints.

    Raises InputError naming the option, its value and what to pass instead.
    """
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens={max_new_tokens!r}; pass an integer >= 1")
    vocab = vocab_size(manifest)
    options = dict(options)
    stops = options.get("stop_tokens")
    if stops is not None:
        if _is_int(stops):
            stops = [stops]
        elif isinstance(stops, (str, bytes)) or not hasattr(stops, "__iter__"):
            raise InputError(f"stop_tokens={stops!r} ({type(stops).__name__}); pass a list of token ids, "
                             f"e.g. stop_tokens=[2] (or [] to never stop early)")
        options["stop_tokens"] = [_token(t, f"stop_tokens[{i}]", vocab) for i, t in enumerate(stops)]
    if options.get("pad_token_id") is not None:
        options["pad_token_id"] = _token(options["pad_token_id"], "pad_token_id", vocab)
    if options.get("seed") is not None and not _is_int(options["seed"]):
        raise InputError(f"seed={options['seed']!r}; pass an integer (or None)")
    ids = np.asarray(input_ids)
    if ids.size and np.issubdtype(ids.dtype, np.integer):
        if ids.min() < 0 or (vocab is not None and ids.max() >= vocab):
            bad = int(ids.min() if ids.min() < 0 else ids.max())
            top = f"{vocab - 1}" if vocab is not None else "..."
            raise InputError(f"input_ids holds token id {bad}, outside this model's vocabulary 0..{top}; "
                             f"padding positions too must hold a valid id (e.g. the pad or eos id)")
    return int(max_new_tokens), options
