"""Every option of every stage, as frozen dataclasses with the defaults in one place.

The CLI maps its options onto these and nothing else; library code takes these and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", "fp8")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")
WEIGHT_ROUNDINGS = ("nearest", "gptq")
HARDWARE_COMPATIBILITY = ("none", "ampere_plus", "same_compute_capability")
# The TensorRT runtime a package's engines are built for: "full" (tensorrt) runs any engine of its
# own version; "lean" (tensorrt_lean, pip-installable, ~45 MB) runs only version-compatible ones.
TENSORRT_RUNTIMES = ("full", "lean")
# "shared": one engine, one optimization profile per bucket (weights once in GPU memory);
# "per-bucket": one independent engine per bucket (each carries its own copy of the weights).
ENGINE_LAYOUTS = ("shared", "per-bucket")


@dataclass(frozen=True)
class ExportSettings:
    # Opset 23 is the first with ONNX Attention/RMSNormalization/RotaryEmbedding, which the dynamo
    # exporter then emits itself and TensorRT >= 10.15 imports natively.
    opset: int = 23
    # The dynamo exporter is the supported path; the legacy TorchScript exporter is kept for
    # models dynamo cannot trace (it caps at opset 20).
    dynamo: bool = True
    # Let the dynamo exporter run its own onnxscript optimizer (fusions included).
    exporter_optimize: bool = True
    # Run the Python a checkpoint ships (config.json auto_map). Off: left to transformers, a "y" on
    # stdin would run it.
    trust_remote_code: bool = False
    # Causal LMs: "static" = a fixed-size cache per layer updated in place by TensorScatter (opset 24,
    # TensorRT >= 10.15); "concat" = past + new concatenated into a fresh present (older TensorRT).
    kv_cache: str = "static"
    # Cache precision, independent of the weights': "auto" (the weights'), "fp32", "fp16", "bf16".
    kv_cache_dtype: str = "auto"
    # Causal LMs: logits for every position (else only each row's last, what generation reads).
    all_logits: bool = False


@dataclass(frozen=True)
class OptimizeSettings:
    precision: str = "fp32"
    # Names of passes (function names in passes.PIPELINE) to skip.
    disabled_passes: tuple[str, ...] = ()
    # Run the structural graph check after every pass (tests turn this on; it costs a checker run).
    check_each_pass: bool = False
    # Keep graph inputs/outputs in FP32 when converting to a lower precision.
    keep_io_fp32: bool = True


@dataclass(frozen=True)
class CalibrationSettings:
    data: Path | None = None  # .npz of input arrays, or a text file (with the model's tokenizer)
    # minmax with SmoothQuant "auto" was the most accurate all-INT8 setting on MiniLM
    # (`trtcompile bench precision`); entropy was the least.
    method: str = "minmax"
    percentile: float = 99.99
    num_samples: int = 64
    # SmoothQuant migration strength in [0, 1], "auto" (searched per layer), or None (off).
    smoothquant_alpha: float | str | None = "auto"
    # Mean embedding cosine (encoders) or top-1 agreement (LMs) vs FP32 that INT8 must keep;
    # the most sensitive MatMuls fall back to FP32 until it holds.
    accuracy_target: float | None = None
    # Also quantize activation x activation MatMuls (unfused attention's Q@K^T and P@V).
    int8_attention: bool = False
    # MatMul/Gemm node names to keep out of INT8 whatever the accuracy.
    exclude_nodes: tuple[str, ...] = ()
    # INT8/FP8 weights: "gptq" (round row by row, each row's error compensated by the rows after
    # it on the calibration activations; MiniLM all-INT8 cosine on unseen text 0.99858 vs 0.99807)
    # or "nearest" (each weight on its own, faster).
    weight_rounding: str = "gptq"
    # Precision of everything that is not INT8 (norms, attention, fallback layers): "fp32", or
    # "fp16" for TensorRT speed (the Q/DQ scales become FP16 too; accuracy is re-measured).
    float_precision: str = "fp32"
    # INT4 weight-only (--precision int4): "awq" (activation-aware scales + clip search, needs
    # calibration data) or "rtn" (round to nearest).
    int4_method: str = "awq"
    # Weights per block of this many rows along K; 128 is what TensorRT's INT4 GEMM and ModelOpt
    # default to (a weight whose K it does not divide takes the largest of 64/32/16 that does).
    int4_block_size: int = 128
    # Symmetric (zero point 0) is the only form TensorRT takes; asymmetric (uint4 + zero points)
    # runs on ONNX Runtime only.
    int4_symmetric: bool = True
    # Quantize the LM head too. Off by default, as in ModelOpt's INT4 AWQ recipe (its default
    # config disables "*lm_head*"): on SmolLM2-135M the INT4 head alone moved perplexity from
    # 1.25x to 1.41x FP32's. A float head tied to the embedding reads the embedding's initializer.
    int4_lm_head: bool = False
    # FP8: quantize the LM head too. Off by default, as in ModelOpt's FP8 recipe (its default
    # config disables every "*lm_head*" quantizer, and TensorRT-LLM quantizes through it): the
    # head's rounding error lands on the logits directly.
    fp8_lm_head: bool = False
    # Precision of everything that is not an INT4 weight: fp16 for TensorRT, fp32 for CPU speed.
    int4_activations: str = "fp16"


@dataclass(frozen=True)
class BuildSettings:
    # TensorRT builder optimization level, 0..5 (TensorRT's default is 3).
    optimization_level: int = 3
    workspace_mib: int | None = None
    timing_cache: Path | None = None
    hardware_compatibility: str = "none"
    # The runtime the engines are for; "lean" makes them version-compatible (the lean runtime runs
    # nothing else), "full" builds plain engines, which may run faster.
    runtime: str = "full"
    # None follows `runtime`; True/False overrides it (False with runtime "lean" is an error).
    version_compatible: bool | None = None
    exclude_lean_runtime: bool = False
    engines: str = "shared"
    max_aux_streams: int | None = None
    # Fail when no engine can be built (no TensorRT or no GPU), instead of packaging without one.
    require_engine: bool = False

    @property
    def builds_version_compatible(self) -> bool:
        return self.runtime == "lean" if self.version_compatible is None else bool(self.version_compatible)


@dataclass(frozen=True)
class VerifySettings:
    # Max abs error allowed per output (scaled by max(1, |reference|)), by precision; cosine floor
    # for float outputs. Verification feeds random inputs from every bucket: for INT8 these are far
    # from the calibration distribution, so its bounds only catch a broken graph; INT8 accuracy on
    # real data is the quantizer's held-out gate (--accuracy-target), recorded in the manifest.
    atol: dict[str, float] = field(
        default_factory=lambda: {"fp32": 1e-4, "fp16": 5e-2, "bf16": 2e-1, "int8": 1.0, "fp8": 1.0, "int4": 1.0}
    )
    min_cosine: dict[str, float] = field(
        default_factory=lambda: {"fp32": 0.99999, "fp16": 0.999, "bf16": 0.99, "int8": 0.95, "fp8": 0.95,
                                 "int4": 0.95}
    )
    seed: int = 0
    enabled: bool = True
