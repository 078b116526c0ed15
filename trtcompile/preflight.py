"""Every check that can be made from the options alone, made before any work starts.

`compile`, `export`, `optimize` and `build` call `check_options` first, so a typo in a pass name,
an opset the exporter cannot write, INT8 without calibration data, `--require-engine` on a machine
without TensorRT, or an output that cannot be written fails in a second, not after minutes of
export. Each check raises UserError naming the option, the value and the fix.
"""

from __future__ import annotations

import os
from pathlib import Path

from trtcompile.errors import UserError
from trtcompile.settings import (CALIBRATION_METHODS, PRECISIONS, BuildSettings, CalibrationSettings, ExportSettings,
                                 OptimizeSettings)

MIN_DYNAMO_OPSET = 18  # dynamo at opset 17 writes invalid graphs (environment.md)
MAX_DYNAMO_OPSET = 24  # the newest opset ONNX Runtime 1.32 runs and TensorRT 11's parser reads
MAX_LEGACY_OPSET = 20  # the TorchScript exporter's ceiling


def default_opset(legacy_exporter: bool) -> int:
    return MAX_LEGACY_OPSET if legacy_exporter else ExportSettings().opset


def check_options(*, export: ExportSettings | None = None, optimize: OptimizeSettings | None = None,
                  calibration: CalibrationSettings | None = None, build: BuildSettings | None = None,
                  package_out: Path | None = None, onnx_out: Path | None = None) -> None:
    if export is not None:
        check_export(export)
    if optimize is not None:
        check_optimize(optimize, calibration or CalibrationSettings())
    if build is not None:
        check_build(build)
    if package_out is not None:
        from trtcompile.package import check_destination

        check_destination(Path(package_out))
    if onnx_out is not None:
        check_onnx_output(Path(onnx_out))


def check_export(settings: ExportSettings) -> None:
    if settings.dynamo and not MIN_DYNAMO_OPSET <= settings.opset <= MAX_DYNAMO_OPSET:
        raise UserError(f"--opset {settings.opset} is outside what the dynamo exporter writes here "
                        f"({MIN_DYNAMO_OPSET}..{MAX_DYNAMO_OPSET})",
                        hint=f"use --opset between {MIN_DYNAMO_OPSET} and {MAX_DYNAMO_OPSET} (23 is the default)")
    if not settings.dynamo and not 7 <= settings.opset <= MAX_LEGACY_OPSET:
        raise UserError(f"--opset {settings.opset} is outside what the legacy exporter writes (7..{MAX_LEGACY_OPSET})",
                        hint=f"use --opset {MAX_LEGACY_OPSET} with --legacy-exporter (its default), or drop "
                             f"--legacy-exporter for opset {MIN_DYNAMO_OPSET}..{MAX_DYNAMO_OPSET}")


def pass_names() -> list[str]:
    from trtcompile.passes import PIPELINE
    from trtcompile.passes.precision import precision_passes

    names = [fn.__name__ for fn in PIPELINE]
    for precision in ("fp16", "bf16"):
        names += [fn.__name__ for fn in precision_passes(OptimizeSettings(precision=precision))
                  if fn.__name__ not in names]
    return names + ["read_cache_in_place"]  # optimize's last step (e.g. off for a TensorRT without If)


def check_optimize(settings: OptimizeSettings, calibration: CalibrationSettings) -> None:
    if settings.precision not in PRECISIONS:
        raise UserError(f"--precision {settings.precision!r} is not one of {', '.join(PRECISIONS)}")
    known = pass_names()
    for name in settings.disabled_passes:
        if name not in known:
            import difflib

            close = difflib.get_close_matches(name, known, n=1)
            raise UserError(f"--disable-pass {name!r} is not a pass" + (f" (did you mean {close[0]!r}?)" if close else ""),
                            hint=f"the passes are {', '.join(known)}")
    check_calibration(settings.precision, calibration)


def check_calibration(precision: str, calibration: CalibrationSettings) -> None:
    defaults = CalibrationSettings()
    quantized = precision in ("int8", "fp8", "int4")  # calibration data, accuracy target, excluded nodes
    qdq = precision in ("int8", "fp8")                 # Q/DQ options (ranges, attention, float rest)
    if calibration.fp8_lm_head and precision != "fp8":
        raise UserError(f"--fp8-lm-head applies only to --precision fp8, but the precision is {precision}",
                        hint="drop --fp8-lm-head (INT4's LM head: --int4-lm-head/--no-int4-lm-head)")
    if not quantized or precision == "int4":
        given = [opt for opt, set_ in (("--calibration-data", calibration.data is not None and not quantized),
                                       ("--accuracy-target", calibration.accuracy_target is not None and not quantized),
                                       ("--exclude-node", bool(calibration.exclude_nodes) and not quantized),
                                       ("--int8-attention", calibration.int8_attention),
                                       ("--int8-fallback", calibration.float_precision != defaults.float_precision),
                                       ("--weight-rounding", calibration.weight_rounding != defaults.weight_rounding),
                                       ("--calibration-method", calibration.method != defaults.method))
                 if set_]
        if given:
            scope = "int8/fp8/int4" if given[0] in ("--calibration-data", "--accuracy-target", "--exclude-node") \
                else "int8/fp8"
            raise UserError(f"{given[0]} applies only to --precision {scope}, but the precision is {precision}",
                            hint=f"add --precision int8, or drop {given[0]}")
        if not quantized or calibration.data is None:
            if precision == "int4" and calibration.int4_method != "rtn":
                raise UserError(f"--int4-method {calibration.int4_method} needs calibration data",
                                hint="pass --calibration-data FILE (a text file works for models with a tokenizer), "
                                     "or use --int4-method rtn")
            return
    if calibration.data is None:
        raise UserError(f"--precision {precision} needs calibration data",
                        hint="pass --calibration-data FILE (.npz of inputs, or a text file for models "
                             "with a tokenizer; samples/calibration.txt is one)")
    if not Path(calibration.data).is_file():
        raise UserError(f"--calibration-data {str(calibration.data)!r} does not exist",
                        hint="pass a .npz of inputs or a text file (samples/calibration.txt is one)")
    if calibration.method not in CALIBRATION_METHODS:
        raise UserError(f"--calibration-method {calibration.method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
    if calibration.num_samples < 1:
        raise UserError(f"--calibration-samples {calibration.num_samples} must be at least 1")
    target = calibration.accuracy_target
    if target is not None and not 0 < target <= 1:
        raise UserError(f"--accuracy-target {target} must be in (0, 1] (a mean cosine or top-1 agreement)",
                        hint="e.g. --accuracy-target 0.999")


def check_build(settings: BuildSettings) -> None:
    from trtcompile.build.engine import validate_settings

    validate_settings(settings)
    if settings.timing_cache is not None and not Path(settings.timing_cache).parent.is_dir():
        raise UserError(f"--timing-cache {str(settings.timing_cache)!r}: directory "
                        f"{str(Path(settings.timing_cache).parent)!r} does not exist",
                        hint="pass a file in an existing directory (the file is created on first use)")
    if settings.require_engine:
        from trtcompile.build import engine_unavailable_reason

        reason = engine_unavailable_reason()
        if reason is not None:
            raise UserError(f"no TensorRT engine can be built here: {reason}",
                            hint="run on a machine with TensorRT and a CUDA GPU, or drop --require-engine "
                                 "to package the ONNX model without engines")


def check_onnx_output(path: Path) -> None:
    """-o of `export`/`optimize`: a file we can create, in a directory that exists."""
    if path.is_dir():
        raise UserError(f"-o {str(path)!r} is a directory; these commands write one .onnx file",
                        hint=f"e.g. -o {path / 'model.onnx'}")
    if path.suffix != ".onnx":
        raise UserError(f"-o {str(path)!r} does not end in .onnx", hint=f"e.g. -o {path.with_suffix('.onnx')}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise UserError(f"-o {str(path)!r}: directory {str(parent)!r} does not exist",
                        hint=f"create it first (mkdir -p {parent}) or choose another -o")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UserError(f"-o {str(path)!r} cannot be written (permission denied)", hint="choose another -o")
