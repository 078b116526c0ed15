"""The whole pipeline, stage by stage: export -> optimize -> build -> package -> verify.

Every stage is also a CLI command of its own (`trtcompile export|optimize|build|verify`); this
module strings them together and owns the one rule that matters most: a package is committed to
OUT only after every step, verification included, has succeeded.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from trtcompile.errors import UserError
from trtcompile.progress import Progress
from trtcompile.runtime.manifest import Manifest, read_manifest
from trtcompile.settings import (BuildSettings, CalibrationSettings, ExportSettings, OptimizeSettings,
                                 VerifySettings)


def export_stage(spec: str, profile_path: Path | None, settings: ExportSettings, progress: Progress):
    from trtcompile.export import default_profile, export_onnx, load_source
    from trtcompile.profiles import load_profile

    with progress.stage("load", spec):
        source = load_source(spec)
        profile = load_profile(profile_path) if profile_path else default_profile(source)
    with progress.stage("export", f"opset {settings.opset}, {'dynamo' if settings.dynamo else 'legacy'} exporter"):
        model = export_onnx(source, profile, settings)
    return source, model


def optimize_stage(model: onnx.ModelProto, settings: OptimizeSettings, calibration: CalibrationSettings,
                   progress: Progress):
    from trtcompile.optimize import optimize

    with progress.stage("optimize", settings.precision):
        result = optimize(model, settings, calibration, on_pass=lambda name: progress.step(f"optimize: {name}"))
    for warning in result.warnings:
        progress.line(f"[yellow]warning:[/yellow] {warning}")
    return result


def package_stage(model: onnx.ModelProto, out: Path, *, reports: list, warnings: list[str],
                  build: BuildSettings, progress: Progress, verify_with=None) -> Manifest:
    """Write the package (engines where TensorRT and a GPU exist), verify it, then commit it."""
    from trtcompile.build import build_engines, engine_unavailable_reason
    from trtcompile.build.engine import validate_settings
    from trtcompile.export import read_metadata

    validate_settings(build)  # also where no engine can be built: a bad option is an error everywhere
    from trtcompile.package import MODEL_FILE, TOKENIZER_DIR, PackageWriter, new_manifest, write_model_files
    from trtcompile.runtime.shapes import Bucket, TensorSpec

    meta = read_metadata(model)
    with PackageWriter(out) as pkg:
        write_model_files(pkg, model, meta)
        manifest = new_manifest(model, meta, reports=reports, warnings=warnings, timings=progress.timings)
        if pkg.path(TOKENIZER_DIR).is_dir():
            manifest["tokenizer"] = TOKENIZER_DIR
        reason = engine_unavailable_reason()
        if reason is None:
            inputs = [TensorSpec.from_dict(t) for t in manifest["inputs"]]
            buckets = [Bucket.from_dict(b) for b in manifest["buckets"]]
            with progress.stage("build", f"{len(buckets)} TensorRT engine(s)"):
                manifest["engines"] = build_engines(pkg.path(MODEL_FILE), inputs, buckets, build,
                                                    pkg.tmp, on_progress=progress.step)
        elif build.require_engine:
            raise UserError(f"no TensorRT engine can be built here: {reason}",
                            hint="run on a machine with TensorRT and a CUDA GPU, or drop --require-engine "
                                 "to package the ONNX model without engines")
        else:
            manifest["build"]["engines_skipped"] = reason
            # One line; the full reason is in the manifest (`trtcompile inspect`).
            progress.line(f"[yellow]no engines:[/yellow] {reason.split(';')[0].split('. ')[0]}; packaged "
                          f"model.onnx for the ONNX Runtime backend (--require-engine makes this an error)")
        manifest["build"]["settings"] = _settings_dict(build)
        manifest["build"]["timings_s"] = dict(progress.timings)
        pkg.write_manifest(manifest)
        if verify_with is not None:
            manifest["accuracy"] = verify_with(pkg.tmp, manifest)
            manifest["build"]["timings_s"] = dict(progress.timings)
            pkg.write_manifest(manifest)
        pkg.commit()
    return read_manifest(out)


def verify_stage(package_dir: Path, reference, precision: str, settings: VerifySettings, progress: Progress,
                 backend: str = "onnxruntime") -> dict:
    from trtcompile import runtime
    from trtcompile.verify import describe_failure, verify

    with progress.stage("verify", f"against the original model ({backend})"):
        with runtime.load(package_dir, backend=backend) as model:
            report = verify(model, reference, precision=precision, settings=settings,
                            on_case=lambda b, d: progress.step(f"verify: bucket {b} {d}"))
    worst = ", ".join(f"{n}: max abs {w['max_abs']:.2g}, cosine {w['min_cosine']:.6f}" for n, w in report["worst"].items())
    progress.line(f"  accuracy vs reference: {worst}")
    if not report["passed"]:
        raise UserError(f"verification failed: {describe_failure(report)}",
                        hint="the package was not written; try --precision fp32, a looser --atol, or "
                             "--no-verify to package it anyway and inspect")
    return report


def compile_package(spec: str, out: Path, *, profile_path: Path | None = None,
                    export: ExportSettings = ExportSettings(), optimize: OptimizeSettings = OptimizeSettings(),
                    calibration: CalibrationSettings = CalibrationSettings(), build: BuildSettings = BuildSettings(),
                    verify: VerifySettings = VerifySettings(), progress: Progress | None = None) -> Manifest:
    from trtcompile.build.engine import validate_settings
    from trtcompile.package import check_destination

    progress = progress or Progress(quiet=True)
    check_destination(Path(out))  # before minutes of export, not after
    validate_settings(build)
    source, raw = export_stage(spec, profile_path, export, progress)
    result = optimize_stage(raw, optimize, calibration, progress)

    def verify_with(tmp_dir: Path, manifest: dict) -> dict:
        return verify_stage(tmp_dir, source.reference, optimize.precision, verify, progress)

    return package_stage(result.model, Path(out), reports=result.reports, warnings=result.warnings, build=build,
                         progress=progress, verify_with=verify_with if verify.enabled else None)


def _settings_dict(settings) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.__dict__.items()}
