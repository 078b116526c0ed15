"""`trtcompile generate OUT --prompt "..."`: stream text from a causal-LM package, then TTFT and tokens/s.

Uses the tokenizer the compile step copied into the package (via `tokenizers`, else
`transformers`, whichever is installed); without one, pass token ids with `--ids 1,2,3`.
Registered by cli.py (`cli.add_command(generate)`).
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from trtcompile.cli_errors import command_options


class TokenizerText:
    """encode/decode with the package's tokenizer; decode of the whole tail keeps merges and bytes right."""

    def __init__(self, directory: Path, trust_remote_code: bool = False):
        self.encode_fn = self.decode_fn = None
        tokenizer_json = directory / "tokenizer.json"
        try:
            from tokenizers import Tokenizer

            if tokenizer_json.is_file():
                tok = Tokenizer.from_file(str(tokenizer_json))
                self.encode_fn = lambda text: tok.encode(text).ids
                self.decode_fn = lambda ids: tok.decode(ids, skip_special_tokens=True)
                return
        except ImportError:
            pass
        try:
            from transformers import AutoTokenizer
        except ImportError:
            return
        # Explicit: left None, transformers asks y/N on stdin and runs the tokenizer's own code on "y".
        try:
            tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                                trust_remote_code=trust_remote_code)
        except Exception as exc:  # noqa: BLE001 - a missing, broken or code-carrying tokenizer
            from trtcompile.errors import UserError

            code = "trust_remote_code" in str(exc)
            raise UserError(f"the package's tokenizer in {str(directory)!r} cannot be loaded: "
                            f"{str(exc).splitlines()[0][:200]}",
                            hint="it ships its own code: read it, then pass --trust-remote-code" if code
                            else "pass token ids with --ids 1,2,3") from exc
        self.encode_fn = lambda text: tok(text)["input_ids"]
        self.decode_fn = lambda ids: tok.decode(ids, skip_special_tokens=True)

    @property
    def available(self) -> bool:
        return self.encode_fn is not None


def find_tokenizer(package: Path, manifest_data: dict, trust_remote_code: bool = False) -> TokenizerText | None:
    name = (manifest_data.get("generation") or {}).get("tokenizer_dir") or manifest_data.get("tokenizer")
    if not name or not (package / name).is_dir():
        return None
    tok = TokenizerText(package / name, trust_remote_code)
    return tok if tok.available else None


def chat_prompt_ids(package: Path, manifest_data: dict, message: str, trust_remote_code: bool = False) -> list[int]:
    """The user message wrapped in the package's chat template (as the model was trained to see it)."""
    from trtcompile.errors import UserError

    name = (manifest_data.get("generation") or {}).get("tokenizer_dir") or manifest_data.get("tokenizer")
    directory = package / name if name else None
    if directory is None or not directory.is_dir():
        raise UserError(f"package {str(package)!r} has no tokenizer, so --chat has no chat template to apply",
                        hint="use --prompt TEXT or --ids 1,2,3")
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise UserError("--chat applies the chat template with transformers, which is not installed",
                        hint="pip install transformers, or pass the formatted prompt with --prompt") from exc
    tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, trust_remote_code=trust_remote_code)
    if not getattr(tok, "chat_template", None):
        raise UserError(f"the tokenizer in {str(directory)!r} has no chat template",
                        hint="use --prompt TEXT (the model was not packaged with a chat template)")
    ids = tok.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    return [int(i) for i in ids]


def parse_ids(text: str, option: str) -> list[int]:
    from trtcompile.errors import UserError

    try:
        ids = [int(t) for t in text.replace(" ", ",").split(",") if t.strip()]
    except ValueError:
        raise UserError(f"{option} {text!r} is not a comma-separated list of token ids", hint=f"e.g. {option} 1,2,3")
    if option == "--ids" and not ids:
        raise UserError(f"{option} is empty", hint="give at least one token id, e.g. --ids 1,2,3")
    return ids


def run_generate(package: Path, prompt: str | None, ids: str | None, max_new_tokens: int, temperature: float,
                 top_k: int, top_p: float, seed: int | None, stop_ids: str | None, backend: str,
                 echo=click.echo, trust_remote_code: bool = False, chat: str | None = None) -> dict:
    """Stream tokens to `echo` as they come; return the timings (also printed)."""
    import numpy as np

    from trtcompile import runtime
    from trtcompile.errors import UserError

    if sum(x is not None for x in (prompt, ids, chat)) != 1:
        raise UserError("give exactly one of --prompt TEXT, --chat MESSAGE or --ids 1,2,3")
    with runtime.load(package, backend=backend) as model:
        tokenizer = find_tokenizer(Path(package), model.manifest.data, trust_remote_code)
        if chat is not None:
            prompt_ids = chat_prompt_ids(Path(package), model.manifest.data, chat, trust_remote_code)
        elif prompt is not None:
            if tokenizer is None:
                raise UserError(f"package {str(package)!r} has no usable tokenizer (none was copied in at compile "
                                f"time, or neither `tokenizers` nor `transformers` is installed)",
                                hint="pass token ids instead: --ids 1,2,3 (or pip install tokenizers)")
            prompt_ids = tokenizer.encode_fn(prompt)
        else:
            prompt_ids = parse_ids(ids, "--ids")
        stops = parse_ids(stop_ids, "--stop-ids") if stop_ids is not None else None
        sampling = dict(do_sample=temperature > 0, temperature=temperature if temperature > 0 else 1.0,
                        top_k=top_k, top_p=top_p, seed=seed)
        start = time.perf_counter()
        steps = model.stream(np.asarray([prompt_ids], np.int64), max_new_tokens=max_new_tokens,
                             stop_tokens=stops, **sampling)
        new: list[int] = []
        shown = ""
        first = None
        for step in steps:
            token = int(step[0])
            if first is None:
                first = time.perf_counter()
            new.append(token)
            if tokenizer is not None:
                text = tokenizer.decode_fn(new)
                echo(text[len(shown):], nl=False)
                shown = text
            else:
                echo(f"{token} ", nl=False)
        end = time.perf_counter()
        echo("")
        stats = {"backend": model.backend_name, "prompt_tokens": len(prompt_ids), "new_tokens": len(new),
                 "ttft_ms": (first - start) * 1e3,
                 "tokens_per_s": (len(new) - 1) / (end - first) if len(new) > 1 and end > first else float("nan"),
                 "total_s": end - start, "tokens": new,
                 "text": tokenizer.decode_fn(new) if tokenizer is not None else None}
        echo(f"[{stats['backend']}] prompt {stats['prompt_tokens']} tokens, {stats['new_tokens']} new: "
             f"TTFT {stats['ttft_ms']:.1f} ms, {stats['tokens_per_s']:.1f} tokens/s after the first "
             f"({stats['total_s']:.2f} s in all)")
        return stats


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--prompt", help="Text, tokenized with the package's tokenizer.")
@click.option("--chat", help="A user message, wrapped in the package's chat template (instruct models).")
@click.option("--ids", help="Prompt as token ids, comma-separated (when the package has no tokenizer).")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 = greedy; > 0 samples with this temperature.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="Sampling: keep the k most likely (0 = all).")
@click.option("--top-p", type=click.FloatRange(0, 1, min_open=True), default=1.0, show_default=True,
              help="Sampling: nucleus mass to keep.")
@click.option("--seed", type=int, help="Sampling seed, for reproducible output.")
@click.option("--stop-ids", help="Stop token ids, comma-separated (default: the model's eos; '' for none).")
@click.option("--backend", type=click.Choice(("auto", "tensorrt", "onnxruntime")), default="auto", show_default=True)
@click.option("--trust-remote-code", is_flag=True, help="Run the Python code the package's tokenizer ships.")
@click.option("--json", "as_json", is_flag=True, help="Print the tokens, text and timings as JSON at the end.")
@command_options
def generate(package, prompt, chat, ids, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, backend,
             trust_remote_code, as_json):
    """Generate text from a causal-LM package, printing tokens as they come, then TTFT and tokens/s."""
    echo = (lambda *a, **k: None) if as_json else click.echo
    stats = run_generate(package, prompt, ids, max_new_tokens, temperature, top_k, top_p, seed, stop_ids, backend,
                         echo=echo, trust_remote_code=trust_remote_code, chat=chat)
    if as_json:
        import json

        clean = {k: (None if isinstance(v, float) and v != v else v) for k, v in stats.items()}  # NaN is not JSON
        click.echo(json.dumps(clean, indent=2, default=str))
