"""Export -> verify -> build -> verify -> register, for one checkpoint, profile and backend.

Nothing reaches the manifest unless every step passed; the engine file is renamed into place
only after its own accuracy check, so a cancelled, failed or killed build leaves no entry and no
engine file (a killed one leaves a temp file that the next prune removes).

An export is reused by every later build of the same checkpoint only when its weights record says
it holds that checkpoint's weights; one without a record (made by an earlier version, possibly
from a model with a LoRA merged in) is made again. The engine's identity in the manifest carries
the record's digest, and a copy of the record is kept beside the engines for the WebUI's hook.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator

import torch
from filelock import FileLock, Timeout

from sd_unet_trt.errors import UserError
from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.models.vae import decode, seeded_decoder
from sd_unet_trt.trt_core.atomic import as_disk_full, fsync_file, staged_output
from sd_unet_trt.trt_core.backends.base import Backend, BuildOutcome, BuildRequest
from sd_unet_trt.trt_core.build_check import BuildChoice, build_problem
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.export import ExportResult
from sd_unet_trt.trt_core.export_folder import is_empty_folder, is_our_export, set_aside
from sd_unet_trt.trt_core.file_digest import file_sha256
from sd_unet_trt.trt_core.manifest import CheckpointId, EngineEntry, Manifest, ManifestError, engine_id
from sd_unet_trt.trt_core.precision import PRECISIONS, QUANTIZED
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.progress import CancelToken, ProgressFn, no_progress
from sd_unet_trt.trt_core.unet_source import UNetSource
from sd_unet_trt.trt_core.quality import loop_quality, require_loop
from sd_unet_trt.trt_core.verify import Accuracy, compare, require
from sd_unet_trt.trt_core.workspace import Workspace

log = logging.getLogger(__name__)


class BuildBusy(UserError, RuntimeError):
    """Another build holds the engine folder; one build runs at a time."""


def _scaled(progress: ProgressFn, start: float, end: float) -> ProgressFn:
    return lambda phase, fraction: progress(phase, start + (end - start) * min(max(fraction, 0.0), 1.0))


def onnx_weights(precision: str, quantizes_onnx: bool = False) -> str:
    """What the ONNX export holds for a build in `precision`: INT8/FP8 Q/DQ nodes only for a backend
    that builds from them (TensorRT); the torch backend quantizes the PyTorch UNet itself."""
    if precision in QUANTIZED and quantizes_onnx:
        return precision
    return PRECISIONS[precision].onnx_weights


def ensure_onnx(source: UNetSource, workspace: Workspace, weights: str, device: torch.device | str | None,
                progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> ExportResult:
    """The checkpoint's ONNX, exported once and reused by every profile and backend while its
    weights record says it holds this checkpoint's weights."""
    folder = workspace.onnx_folder(source.checkpoint, source.family, weights)
    if (folder.exists() or folder.is_symlink()) and not is_our_export(folder) and not is_empty_folder(folder):
        # no weights record of ours (an export of an older version, or someone's files): kept, not replaced
        kept = set_aside(folder)
        log.warning("replacing the export in %s, kept as %s: it has no weights record of this extension (an export "
                    "made before weights were recorded may hold a LoRA that was merged into the model at the time)",
                    folder, kept.name)
    elif folder.exists():
        try:
            found = ExportResult.read(folder, source.family, weights)
        except ValueError as e:
            log.warning("replacing the export in %s: %s (an export made before weights were recorded may hold a "
                        "LoRA that was merged into the model at the time)", folder, e)
        else:
            if found.record.checkpoint_sha256 == source.checkpoint.sha256:
                progress("export: reusing the ONNX of this checkpoint", 1.0)
                return found
            log.warning("replacing the export in %s: it was made from other weights", folder)
    return source.export(folder, weights, device=device, progress=progress, cancel=cancel)


def reference_unet(source: UNetSource, device: torch.device) -> torch.nn.Module:
    """The PyTorch UNet that engines are held to: fp32 on the CPU, fp16 on a GPU."""
    return source.load(torch.float32 if device.type == "cpu" else torch.float16, device)


def verify_onnx(onnx_path: Path, reference: torch.nn.Module, family: ModelFamily, profile: Profile,
                weights: str) -> Accuracy:
    runtime = OnnxRuntimeBackend()
    engine = runtime.load(onnx_path, "onnx", family, profile, device="cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = next(reference.parameters()).device
        return require(compare(engine, reference, family, profile, weights, device=device,
                               ref_dtype=next(reference.parameters()).dtype), f"the ONNX export ({onnx_path})")
    finally:
        engine.close()


def verify_engine(backend: Backend, path: Path, entry_id: str, reference: torch.nn.Module, request: BuildRequest,
                  outcome: BuildOutcome, device: torch.device, progress: ProgressFn) -> dict[str, float]:
    """The built engine against the PyTorch UNet, before it may replace anything: one call at each
    profile point, and for INT8/FP8 a whole denoising loop too (quality.py), whose final latent
    must stay within the precision's tolerance; a backend that can rebuild its quantized recipe in
    PyTorch is also held tightly to that (its implementation gate)."""
    progress(f"verify: {backend.name} engine against PyTorch", 0.9)
    engine = backend.load(path, entry_id, request.family, request.profile, device=device.type)
    ref_dtype = next(reference.parameters()).dtype
    what = f"the {backend.name} engine"
    try:
        accuracy = require(compare(engine, reference, request.family, request.profile, outcome.precision,
                                   device=device, ref_dtype=ref_dtype), what).as_dict()
        if outcome.precision in QUANTIZED:
            progress(f"verify: {backend.name} engine against its quantized recipe", 0.91)
            accuracy.update(backend.implementation_gate(engine, path, reference, request.profile, device, what) or {})
        if outcome.precision in QUANTIZED:
            progress(f"verify: {backend.name} engine over a denoising loop", 0.93)
            profile = request.profile
            latent = (profile.latent(profile.height).opt, profile.latent(profile.width).opt)
            decoder = seeded_decoder().to(device)  # random weights: the PSNR is a relative figure
            loop = loop_quality(engine, reference, request.family, latent, device=device, dtype=ref_dtype,
                                decoder=lambda z: decode(decoder, z, request.family.name))
            accuracy.update(require_loop(loop, outcome.precision, what))
        return accuracy
    finally:
        engine.close()


def build_engine(source: UNetSource, profile: Profile, backend: Backend, workspace: Workspace,
                 precision: str = "fp16", device: torch.device | str | None = None, progress: ProgressFn = no_progress,
                 cancel: CancelToken | None = None, options: dict | None = None,
                 controlnet: bool = False) -> EngineEntry:
    """`controlnet`: the engine takes ControlNet's residuals as inputs too (its family is the
    checkpoint's `with_controlnet()`; its export and its checks include them)."""
    if controlnet:
        source = replace(source, family=source.family.with_controlnet())
    family = source.family
    profile.validate()
    problem = build_problem(BuildChoice(backend.name, precision, profile, controlnet), backend)
    if problem:
        raise problem
    cancel = cancel or CancelToken()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with exclusive_build(workspace) as manifest:
        started = time.monotonic()
        weights = onnx_weights(precision, backend.quantizes_onnx)
        exported = ensure_onnx(source, workspace, weights, device, _scaled(progress, 0.0, 0.3), cancel)
        checkpoint = replace(source.checkpoint, weights=exported.record.digest)
        cancel.raise_if_cancelled()
        progress("verify: ONNX Runtime against PyTorch", 0.3)
        reference = reference_unet(source, device)
        onnx_accuracy = verify_onnx(exported.onnx_path, reference, family, profile, weights)
        cancel.raise_if_cancelled()

        request = BuildRequest(exported.onnx_path, family, profile, precision, module=reference,
                               device=device.type, options=dict(options or {}))

        def verify(staged: Path, entry_id: str, outcome: BuildOutcome) -> dict[str, float]:
            return verify_engine(backend, staged, entry_id, reference, request, outcome, device, progress)
        return build_and_register(workspace, manifest, backend, request, checkpoint, exported, onnx_accuracy,
                                  started, verify, progress, cancel)


def build_and_register(workspace: Workspace, manifest: Manifest, backend: Backend, request: BuildRequest,
                       checkpoint: CheckpointId, exported: ExportResult, onnx_accuracy: Accuracy, started: float,
                       verify: Callable[[Path, str, BuildOutcome], dict[str, float]], progress: ProgressFn,
                       cancel: CancelToken, details: dict | None = None) -> EngineEntry:
    """The backend's build into a staged file, `verify` of it (skipped where the backend cannot run
    it here), and its registration; for a UNet's engines and a ControlNet's alike. `details` join
    the entry's."""
    device = request.device
    entry_id = engine_id(checkpoint, request.family.name, backend.name, request.precision, request.profile)
    file_name = entry_id + backend.file_suffix
    cannot_run = backend.can_run(device)  # e.g. TensorRT for RTX building without a GPU
    in_the_way = manifest.in_the_way(entry_id, file_name)
    if in_the_way:  # said before the build, not after it (Manifest.add checks again under its lock)
        raise ManifestError(in_the_way)
    with staged_output(manifest.dir / file_name) as staged:
        outcome = backend.build(request, staged, _scaled(progress, 0.4, 0.9), cancel)
        cancel.raise_if_cancelled()
        accuracy = None if cannot_run else verify(staged, entry_id, outcome)
        details = {**outcome.details, "onnx": str(exported.onnx_path.relative_to(workspace.root)),
                   "onnx_accuracy": onnx_accuracy.as_dict(), **(details or {})}
        if cannot_run:
            details["unverified"] = cannot_run
        progress("registering the engine", 0.97)
        fsync_file(staged)
        entry = EngineEntry(
            id=entry_id, checkpoint=checkpoint, family=request.family.name, backend=backend.name,
            backend_version=backend.version(),
            gpu_arch=outcome.details.get("gpu_arch") or backend.device_arch(device), profile=request.profile,
            precision=outcome.precision, file=file_name, file_size=staged.stat().st_size,
            file_sha256=file_sha256(staged), build_seconds=round(time.monotonic() - started, 2),
            accuracy=accuracy or {}, details=details)
        exported.record.save(workspace.weights_record_path(checkpoint.weights))
        manifest.add(entry, staged=staged)
    progress("done", 1.0)
    return entry


@contextmanager
def exclusive_build(workspace: Workspace) -> Iterator[Manifest]:
    """The one build of an engine folder (a UNet's or a ControlNet's): its `.build.lock`, taken
    without waiting (BuildBusy), what killed builds left swept first, and a failure while the disk
    is full reported as DiskFullError."""
    manifest = workspace.manifest()
    manifest.dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(manifest.dir / ".build.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise BuildBusy("another engine build is running; wait for it to finish") from None
    try:
        workspace.sweep()  # what killed builds left; this build holds the lock, so none is running
        yield manifest
    except Exception as e:
        full = as_disk_full(e, workspace.root)
        if full is not None:
            raise full from e
        raise
    finally:
        lock.release()
