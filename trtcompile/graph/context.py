"""What a pass sees besides the graph: settings, facts about the model, and its own report."""

from __future__ import annotations

from dataclasses import dataclass, field

from trtcompile.graph.report import PassReport
from trtcompile.settings import OptimizeSettings


@dataclass(frozen=True)
class ModelInfo:
    """Facts from the model's config that let passes check their own coverage.

    All optional: an `.onnx` input or a factory may not have a config.
    """

    model_type: str | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    hidden_size: int | None = None
    head_dim: int | None = None
    is_decoder: bool = False

    @classmethod
    def from_config(cls, config: dict) -> "ModelInfo":
        """From a Hugging Face config.json dict (the common key spellings of the families)."""

        def first(*keys):
            for key in keys:
                if config.get(key) is not None:
                    return config[key]
            return None

        heads = first("num_attention_heads", "n_head", "num_heads", "n_heads")
        hidden = first("hidden_size", "n_embd", "d_model", "dim")
        head_dim = first("head_dim") or (hidden // heads if hidden and heads else None)
        archs = config.get("architectures") or []
        return cls(
            model_type=config.get("model_type"),
            num_layers=first("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
            num_heads=heads,
            num_kv_heads=first("num_key_value_heads", "num_kv_heads") or heads,
            hidden_size=hidden,
            head_dim=head_dim,
            is_decoder=any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs),
        )

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class PassContext:
    settings: OptimizeSettings = field(default_factory=OptimizeSettings)
    model: ModelInfo = field(default_factory=ModelInfo)
    # The report of the pass now running; run_pipeline sets it before each pass.
    report: PassReport = field(default_factory=lambda: PassReport("adhoc"))
    # Problems the user should see (e.g. fewer attention blocks fused than the config has layers).
    warnings: list[str] = field(default_factory=list)

    def warn(self, text: str) -> None:
        self.warnings.append(text)
