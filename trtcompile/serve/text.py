"""Text in and out: the package's tokenizer, its chat template, streaming detokenization, stop strings.

The tokenizer is the one the compile step copied into the package (`tokenizer/`); it is read with
`tokenizers` (tokenizer.json), else `transformers`. The chat template (tokenizer_config.json's
`chat_template`, or chat_template.jinja beside it) is rendered with Jinja2 the way transformers'
`apply_chat_template` renders it (sandboxed, trim_blocks, lstrip_blocks), and the rendered text is
encoded without adding special tokens again, as transformers does: the template writes them.
"""

from __future__ import annotations

import json
from pathlib import Path


class PackageTokenizer:
    def __init__(self, directory: Path):
        self.directory = directory
        config_path = directory / "tokenizer_config.json"
        self.config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        if (directory / "tokenizer.json").is_file():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
            # A tokenizer.json may carry padding and truncation (all-MiniLM-L6-v2's pads every text
            # to 128 tokens): the server pads batches itself and refuses, never cuts, a long input.
            tok.no_padding()
            tok.no_truncation()
            self._encode = lambda text, special: tok.encode(text, add_special_tokens=special).ids
            self._decode = lambda ids: tok.decode(ids, skip_special_tokens=True)
            self.token_to_id = tok.token_to_id
        else:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
            self._encode = lambda text, special: tok(text, add_special_tokens=special)["input_ids"]
            self._decode = lambda ids: tok.decode(ids, skip_special_tokens=True)
            self.token_to_id = tok.convert_tokens_to_ids
        self.chat_template = _chat_template(directory, self.config)
        self._compiled = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._encode(text, add_special_tokens))

    def decode(self, ids: list[int]) -> str:
        return self._decode(ids)

    def special_token(self, name: str) -> str | None:
        value = self.config.get(name)
        return value.get("content") if isinstance(value, dict) else value

    @property
    def eos_token_id(self) -> int | None:
        eos = self.special_token("eos_token")
        return self.token_to_id(eos) if eos else None

    def render_chat(self, messages: list[dict]) -> str:
        """The prompt text for OpenAI-style messages, with the assistant's turn opened."""
        if self._compiled is None:
            self._compiled = _jinja_environment().from_string(self.chat_template)
        specials = {name: self.special_token(name) for name in
                    ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token")}
        return self._compiled.render(messages=messages, add_generation_prompt=True,
                                     **{k: v for k, v in specials.items() if v is not None})


def _chat_template(directory: Path, config: dict) -> str | None:
    jinja_file = directory / "chat_template.jinja"
    if jinja_file.is_file():
        return jinja_file.read_text()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    return template


def _jinja_environment():
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        from jinja2.exceptions import TemplateError

        raise TemplateError(message)

    def strftime_now(fmt):
        import datetime

        return datetime.datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def find_tokenizer(manifest) -> PackageTokenizer | None:
    data = manifest.data
    name = (data.get("generation") or {}).get("tokenizer_dir") or data.get("tokenizer")
    if not name or not (manifest.root / name).is_dir():
        return None
    return PackageTokenizer(manifest.root / name)


class TextAssembler:
    """Turns generated token ids into text deltas, holding back what might still become a stop string.

    Detokenizing token by token is wrong for byte-level and sentencepiece vocabularies (a
    character can span tokens, a leading space depends on the token before), so each step
    decodes a short window -- the tokens since the last emitted text plus the one before it --
    and emits only what that window adds (the approach of Hugging Face's text-generation-inference);
    a window ending in U+FFFD is an unfinished character and waits for the next token. The
    output is matched against the stop strings on the text, so a stop split across tokens is
    found; what is emitted never contains a stop string or anything after it.
    """

    def __init__(self, tokenizer: PackageTokenizer, stop_strings: list[str]):
        self.tokenizer = tokenizer
        self.stops = stop_strings
        self.hold = max((len(s) for s in stop_strings), default=1) - 1
        self.ids: list[int] = []
        self.prefix = self.read = 0
        self.text = ""       # everything decoded so far
        self.emitted = 0     # how much of self.text has been handed out
        self.stopped = False

    def add(self, token: int) -> str:
        """The text this token makes safe to emit ('' when it must wait)."""
        self.ids.append(token)
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        after = self.tokenizer.decode(self.ids[self.prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self.text += after[len(before):]
        self.prefix, self.read = self.read, len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """What is left once generation ended (an unfinished character included)."""
        if not self.stopped and self.read < len(self.ids):
            before = self.tokenizer.decode(self.ids[self.prefix:self.read])
            after = self.tokenizer.decode(self.ids[self.prefix:])
            self.text += after[len(before):]
            self.read = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        if self.stops:
            start = max(0, self.emitted - self.hold)
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.stopped = True
                self.text = self.text[:min(hits)]
                final = True
        end = len(self.text) if final else max(self.emitted, len(self.text) - self._held_back())
        delta = self.text[self.emitted:end]
        self.emitted = end
        return delta

    def _held_back(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        tail = self.text[-self.hold:] if self.hold else ""
        for k in range(len(tail), 0, -1):
            if any(s.startswith(tail[-k:]) for s in self.stops):
                return k
        return 0
