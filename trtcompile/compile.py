"""The whole pipeline, stage by stage: export -> optimize -> build -> package -> verify.

Every stage is also a CLI command of its own (`trtcompile export|optimize|build|verify`); this
module strings them together and owns the one rule that matters most: a package is committed to
OUT only after every step, verification included, has succeeded.

Stage files carry their record (stage.py): `build` of an optimized file writes the same pass
report, warnings and timings into the package as `compile` would, and verifies it against the
original model the record names; `compile` of a stage file uses the profile stored in it.
"""

from __future__ import annotations

from pathlib import Path

import onnx

from trtcompile.errors import UserError
from trtcompile.progress import Progress
from trtcompile.runtime.manifest import Manifest, read_manifest
from trtcompile.settings import (BuildSettings, CalibrationSettings, ExportSettings, OptimizeSettings,
                                 VerifySettings)

# What to do when verification fails, by the command that verified.
COMPILE_HINT = ("the package was not written; try --precision fp32, a looser --atol, or --no-verify to package "
                "it anyway and inspect")
VERIFY_HINT = ("the package differs from its source beyond the tolerance of its precision; recompile it "
               "(`trtcompile compile`), or check a looser bound with --atol")


def export_stage(spec: str, profile_path: Path | None, settings: ExportSettings, progress: Progress,
                 weights_dir: Path | None = None):
    from trtcompile.export import default_profile, export_onnx, load_source
    from trtcompile.profiles import load_profile

    with progress.stage("load", spec):
        source = load_source(spec, settings, trust_remote_code=settings.trust_remote_code)
        profile = load_profile(profile_path) if profile_path else default_profile(source)
    opset = max(settings.opset, source.min_opset)  # a static KV cache needs opset 24 (TensorScatter)
    with progress.stage("export", f"opset {opset}, {'dynamo' if settings.dynamo else 'legacy'} exporter"):
        model = export_onnx(source, profile, settings, weights_dir=weights_dir)
    # The example inputs were for tracing only; a static cache's are the whole cache per layer
    # (SmolLM2: 180 MiB), which would otherwise stay through verification.
    source.example_inputs = {}
    from trtcompile.onnx_io import release_memory

    release_memory()  # what tracing and saving freed goes back before the reference runs on top
    return source, model


def optimize_stage(model: onnx.ModelProto, settings: OptimizeSettings, calibration: CalibrationSettings,
                   progress: Progress):
    from trtcompile.optimize import optimize

    with progress.stage("optimize", settings.precision):
        result = optimize(model, settings, calibration, on_pass=lambda name: progress.step(f"optimize: {name}"))
    for warning in result.warnings:
        progress.line(f"[yellow]warning:[/yellow] {warning}")
    return result


def save_stage(model: onnx.ModelProto, out: Path, progress: Progress) -> None:
    """Write a stage file with this run's timings added to its record (the package shows them all)."""
    from trtcompile.onnx_io import save_model
    from trtcompile.stage import read_stage, write_stage

    write_stage(model, read_stage(model).with_timings(progress.timings))
    save_model(model, out)


def package_stage(model: onnx.ModelProto, out: Path, *, reports: list, warnings: list[str],
                  build: BuildSettings, progress: Progress, verify_with=None) -> Manifest:
    """Write the package (engines where TensorRT and a GPU exist), verify it, then commit it."""
    from trtcompile.build import build_engines, engine_unavailable_reason
    from trtcompile.build.engine import validate_settings
    from trtcompile.build.tensorrt_graph import import_check

    validate_settings(build)  # also where no engine can be built: a bad option is an error everywhere
    from trtcompile.onnx_io import release_memory
    from trtcompile.package import MODEL_FILE, TOKENIZER_DIR, PackageWriter, new_manifest, write_model_files
    from trtcompile.runtime.shapes import Bucket, TensorSpec
    from trtcompile.stage import read_stage

    stage = read_stage(model)
    # A stage file built on its own brings the earlier stages' report and timings with it.
    reports = reports or stage.passes
    warnings = warnings or stage.warnings

    def timings() -> dict:
        return {**stage.timings, **progress.timings}

    with PackageWriter(out) as pkg:
        if pkg.recovered:
            progress.line(f"[yellow]note:[/yellow] {pkg.recovered}")
        with progress.stage("package", "model.onnx, profile, tokenizer"):
            write_model_files(pkg, model, stage)
            manifest = new_manifest(model, stage, reports=reports, warnings=warnings, timings=timings())
        # From here on everything reads model.onnx from disk: the in-memory graph (the size of
        # the weights) is released before the engines are built and the verifying session opens.
        model = None
        release_memory()
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
            # Without a parser here, check the graph TensorRT would get against its documented rules.
            try:
                problems = import_check(pkg.path(MODEL_FILE))
            except Exception as exc:  # advisory: a check that cannot read the graph must not fail the compile
                problems = None
                progress.line(f"[yellow]TensorRT import check could not run:[/yellow] {type(exc).__name__}: {exc}")
            else:
                manifest["build"]["tensorrt_import_check"] = problems
            if problems:
                progress.line(f"[yellow]TensorRT import check:[/yellow] {len(problems)} documented rule(s) broken, "
                              f"e.g. {problems[0]} (all in the manifest: `trtcompile inspect`)")
        manifest["build"]["settings"] = _settings_dict(build)
        _record_timings(manifest, progress, timings())
        pkg.write_manifest(manifest)
        if verify_with is not None:
            manifest["accuracy"] = verify_with(pkg.tmp, manifest)
            _record_timings(manifest, progress, timings())
            pkg.write_manifest(manifest)
        pkg.commit()
    return read_manifest(out)


def _record_timings(manifest: dict, progress: Progress, timings: dict) -> None:
    manifest["build"]["timings_s"] = timings
    manifest["build"]["peak_rss_mib"] = dict(progress.peak_rss_mib)


def reference_stage(source, model: onnx.ModelProto, settings: VerifySettings, progress: Progress,
                    directory: Path) -> list:
    """The original model's outputs on every verification case, in files under `directory`; then the
    original model is freed.

    Holding PyTorch's weights (or the original ONNX's session) while the package's ONNX Runtime
    session runs would double the peak memory of a compile.
    """
    from trtcompile.onnx_io import release_memory
    from trtcompile.package import tensor_specs
    from trtcompile.runtime.shapes import TensorSpec
    from trtcompile.stage import read_stage
    from trtcompile.verify import reference_cases

    stage = read_stage(model)
    inputs, outputs = tensor_specs(model, stage.value_ranges)
    buckets = stage.profile.buckets
    with progress.stage("reference", f"outputs of the original model on {len(buckets)} bucket(s)"):
        cases = reference_cases([TensorSpec.from_dict(i) for i in inputs], [TensorSpec.from_dict(o) for o in outputs],
                                buckets, source.reference, settings, directory,
                                on_case=lambda b, d: progress.step(f"reference: bucket {b} {d}"))
    source.release()
    release_memory()
    return cases


def verify_stage(package_dir: Path, reference, precision: str, settings: VerifySettings, progress: Progress,
                 backend: str = "onnxruntime", hint: str = COMPILE_HINT, cases: list | None = None) -> dict:
    from trtcompile import runtime
    from trtcompile.verify import VERIFY_SESSION_CONFIG, describe_failure, summary_line, verify

    options = {"config": VERIFY_SESSION_CONFIG} if backend == "onnxruntime" else {}
    with progress.stage("verify", f"against the original model ({backend})"):
        with runtime.load(package_dir, backend=backend, **options) as model:
            from trtcompile.export.kv_cache import verification_precision

            precision = verification_precision(precision, model.manifest.data)
            report = verify(model, reference, precision=precision, settings=settings, cases=cases,
                            on_case=lambda b, d: progress.step(f"verify: bucket {b} {d}"))
    # One line; every output of every case is in the manifest (`trtcompile inspect OUT`).
    progress.line(f"  accuracy vs reference: {summary_line(report)}")
    if not report["passed"]:
        raise UserError(f"verification failed: {describe_failure(report)}", hint=hint)
    return report


def reference_source(spec: str, *, given: bool, trust_remote_code: bool, what: str, generation: dict | None = None):
    """The original model to verify against: `spec` as recorded (or given with --source); a causal LM
    wrapped as the package's `generation` section says (KV-cache form, dtype, length, logits)."""
    from trtcompile.export import load_source
    from trtcompile.stage import source_exists

    if not given and not source_exists(spec):
        raise UserError(f"the original model of {what}, {spec!r}, is not there (looked from {str(Path.cwd())!r})",
                        hint="pass --source PATH to where it is now, or --no-verify to skip the comparison")
    from trtcompile.export.kv_cache import export_settings_for

    source = load_source(spec, export_settings_for(generation), trust_remote_code=trust_remote_code)
    max_cache = (generation or {}).get("max_cache")
    if source.fit_profile is not None and max_cache:  # the static cache's length the package was built with
        source.fit_profile({"buckets": {"cache": {"kv_sequence": [1, 1, int(max_cache)]}}})
    return source


def build_from_stage_file(onnx_file: Path, out: Path, *, build: BuildSettings, source: str | None = None,
                          verify: tuple[float | None, bool] = (None, True), trust_remote_code: bool = False,
                          progress: Progress | None = None) -> Manifest:
    """`trtcompile build`: package a stage file, verified against the model its record names."""
    from trtcompile.onnx_io import load_model
    from trtcompile.stage import read_stage

    progress = progress or Progress(quiet=True)
    model = load_model(onnx_file)
    stage = read_stage(model, str(onnx_file))
    atol, enabled = verify
    verify_with = None
    if enabled:
        reference = reference_source(source or stage.source.spec, given=source is not None,
                                     trust_remote_code=trust_remote_code, what=str(onnx_file))
        settings = _verify_settings(stage.precision, atol)

        def verify_with(tmp_dir: Path, manifest: dict) -> dict:
            return verify_stage(tmp_dir, reference.reference, stage.precision, settings, progress)

    return package_stage(model, Path(out), reports=[], warnings=[], build=build, progress=progress,
                         verify_with=verify_with)


def verify_package(package: Path, *, source: str | None = None, backend: str = "onnxruntime",
                   trust_remote_code: bool = False, atol: float | None = None,
                   progress: Progress | None = None) -> dict:
    """`trtcompile verify`: compare a package with its original model (recorded, or --source)."""
    progress = progress or Progress(quiet=True)
    manifest = read_manifest(package)
    spec = source or manifest.schema.model.source
    reference = reference_source(spec, given=source is not None, trust_remote_code=trust_remote_code,
                                 what=f"package {str(package)!r}", generation=manifest.data.get("generation"))
    return verify_stage(package, reference.reference, manifest.precision,
                        _verify_settings(manifest.precision, atol), progress, backend=backend, hint=VERIFY_HINT)


def float_precision(optimize: OptimizeSettings, calibration: CalibrationSettings) -> str:
    """What the graph's float activations end up in: fp16 for --precision fp16, INT4 with FP16
    activations, and INT8/FP8 with the rest FP16; else fp32 (bf16 for --precision bf16)."""
    if optimize.precision in ("fp16", "bf16"):
        return optimize.precision
    if optimize.precision == "int4":
        return calibration.int4_activations
    if optimize.precision in ("int8", "fp8"):
        return calibration.float_precision
    return "fp32"


def with_cache_dtype(export: ExportSettings, optimize: OptimizeSettings,
                     calibration: CalibrationSettings) -> ExportSettings:
    """`--kv-cache-dtype auto` for a static cache: FP16 when the graph computes in FP16. An FP32 cache
    there would reach TensorRT's KV-cache update through Casts, but the layer updates a network input
    in place (build/tensorrt_rules.py flags it: 120 problems for SmolLM2 INT4), and ONNX Runtime would
    cast the whole cache every step. BF16 keeps FP32 (a BF16 cache cannot be verified here)."""
    from dataclasses import replace

    if export.kv_cache != "static" or export.kv_cache_dtype not in (None, "auto"):
        return export
    return replace(export, kv_cache_dtype="fp16") if float_precision(optimize, calibration) == "fp16" else export


def compile_package(spec: str, out: Path, *, profile_path: Path | None = None,
                    export: ExportSettings = ExportSettings(), optimize: OptimizeSettings = OptimizeSettings(),
                    calibration: CalibrationSettings = CalibrationSettings(), build: BuildSettings = BuildSettings(),
                    verify: VerifySettings = VerifySettings(), progress: Progress | None = None) -> Manifest:
    from trtcompile.preflight import check_options

    progress = progress or Progress(quiet=True)
    export = with_cache_dtype(export, optimize, calibration)
    # Everything the options alone can tell, before minutes of export.
    check_options(export=export, optimize=optimize, calibration=calibration, build=build, package_out=Path(out))
    stage_file = _stage_file(spec)
    if stage_file is not None:
        return _compile_stage_file(spec, stage_file, out, profile_path=profile_path, optimize=optimize,
                                   calibration=calibration, build=build, verify=verify, export=export,
                                   progress=progress)
    import tempfile

    # The weights live on disk here between export and package (lazy_weights.py).
    with tempfile.TemporaryDirectory(prefix="trtcompile-weights-") as weights_dir:
        return _compile_source(spec, Path(out), Path(weights_dir), profile_path=profile_path, export=export,
                               optimize=optimize, calibration=calibration, build=build, verify=verify,
                               progress=progress)


def _compile_source(spec: str, out: Path, weights_dir: Path, *, profile_path, export, optimize, calibration, build,
                    verify, progress) -> Manifest:
    source, raw = export_stage(spec, profile_path, export, progress, weights_dir=weights_dir)
    cases = reference_stage(source, raw, verify, progress, weights_dir / "reference") if verify.enabled else None
    result = optimize_stage(raw, optimize, calibration, progress)
    del raw  # the passes built a new model; the exported one is not needed any more
    from trtcompile.onnx_io import release_memory

    release_memory()

    def verify_with(tmp_dir: Path, manifest: dict) -> dict:
        return verify_stage(tmp_dir, None, optimize.precision, verify, progress, cases=cases)

    model, result.model = result.model, None  # package_stage drops the last reference once written
    return package_stage(model, Path(out), reports=result.reports, warnings=result.warnings, build=build,
                         progress=progress, verify_with=verify_with if verify.enabled else None)


def _stage_file(spec: str) -> onnx.ModelProto | None:
    """The model when `spec` is an .onnx written by `trtcompile export`/`optimize`, else None."""
    if not str(spec).endswith(".onnx") or not Path(spec).is_file():
        return None
    from trtcompile.onnx_io import load_model
    from trtcompile.stage import has_stage

    # Headers first: a foreign .onnx (export is skipped for it) is not read twice in full.
    return load_model(spec) if has_stage(load_model(spec, load_weights=False)) else None


def _compile_stage_file(spec: str, model: onnx.ModelProto, out: Path, *, profile_path, optimize: OptimizeSettings,
                        calibration: CalibrationSettings, build: BuildSettings, verify: VerifySettings,
                        export: ExportSettings, progress: Progress) -> Manifest:
    """A stage file: its stored profile and its original model, not the file itself, are the truth."""
    from trtcompile.stage import read_stage

    stage = read_stage(model, spec)
    if profile_path is not None and _profile_differs(profile_path, stage):
        raise UserError(f"{spec!r} was exported with profile {stage.profile.origin!r}, which fixed its dimensions; "
                        f"--profile cannot change them now",
                        hint="drop --profile to use the stored one, or compile from the original model "
                             f"({stage.source.spec}) with --profile")
    if stage.stage == "optimize":
        if optimize.precision != stage.precision and optimize != OptimizeSettings():
            raise UserError(f"{spec!r} is already optimized (precision {stage.precision}); --precision "
                            f"{optimize.precision} cannot apply to it",
                            hint="drop the optimize options, or compile from the exported or original model")
        reports, warnings = [], []
    else:
        result = optimize_stage(model, optimize, calibration, progress)
        model, reports, warnings = result.model, result.reports, result.warnings
    precision = read_stage(model, spec).precision
    verify_with = None
    if verify.enabled:
        reference = reference_source(stage.source.spec, given=False, trust_remote_code=export.trust_remote_code,
                                     what=spec)

        def verify_with(tmp_dir: Path, manifest: dict) -> dict:
            return verify_stage(tmp_dir, reference.reference, precision, verify, progress)

    return package_stage(model, Path(out), reports=reports, warnings=warnings, build=build, progress=progress,
                         verify_with=verify_with)


def _profile_differs(profile_path: Path, stage) -> bool:
    from trtcompile.profiles import load_profile

    given = load_profile(profile_path).to_dict()
    return given != stage.profile.to_dict()


def _verify_settings(precision: str, atol: float | None) -> VerifySettings:
    settings = VerifySettings()
    return settings if atol is None else VerifySettings(atol={**settings.atol, precision: atol})


def _settings_dict(settings) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.__dict__.items()}
