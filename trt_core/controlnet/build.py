"""Export -> check -> build -> check -> register, for one ControlNet file, profile and backend: the
UNet pipeline's stages (trt_core/pipeline.py: the build lock and sweep, the export made once and
reused, the staged engine file, the registration), with the ControlNet's own checks."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from sd_unet_trt.errors import UserError
from sd_unet_trt.trt_core.backends.base import Backend, BuildOutcome, BuildRequest
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.build_check import BuildChoice, build_problem
from sd_unet_trt.trt_core.controlnet.check import as_runner, compare
from sd_unet_trt.trt_core.controlnet.family import CONFIG_KEY, ControlNetFamily
from sd_unet_trt.trt_core.controlnet.source import ControlNetFile
from sd_unet_trt.trt_core.manifest import EngineEntry
from sd_unet_trt.trt_core.pipeline import (_scaled, build_and_register, ensure_onnx, exclusive_build, onnx_weights,
                                           reference_unet)
from sd_unet_trt.trt_core.precision import QUANTIZED
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.progress import CancelToken, ProgressFn, no_progress
from sd_unet_trt.trt_core.verify import Accuracy, require
from sd_unet_trt.trt_core.workspace import Workspace

REFERENCE = "the PyTorch ControlNet"
BUILDS_CONTROLNETS = ("onnxruntime", "tensorrt", "torch")


class ControlNetBuildRefused(UserError, ValueError):
    """This ControlNet engine cannot be built as asked; the message says why."""


def controlnet_build_problem(backend: Backend, precision: str, profile: Profile) -> UserError | None:
    """The UNet's build check, and what ControlNet engines do not take yet."""
    problem = build_problem(BuildChoice(backend.name, precision, profile, False), backend)
    if problem:
        return problem
    if backend.name not in BUILDS_CONTROLNETS:
        return ControlNetBuildRefused(f"backend: ControlNet engines are built by {' and '.join(BUILDS_CONTROLNETS)}; "
                                      f"{backend.name} compiles only the UNet")
    if precision in QUANTIZED:
        return ControlNetBuildRefused(f"precision: ControlNet engines are fp16 or fp32 ({precision} is calibrated "
                                      "on the UNet's activations)")
    return None


def _check(engine, reference: torch.nn.Module, family: ControlNetFamily, profile: Profile, precision: str,
           device: torch.device, what: str) -> Accuracy:
    try:
        return require(compare(engine, as_runner(reference), family, profile, precision, device=device,
                               ref_dtype=next(reference.parameters()).dtype), what, REFERENCE)
    finally:
        engine.close()


def build_controlnet_engine(workspace: Workspace, controlnet_path: Path | str, profile: Profile, backend: Backend,
                            precision: str = "fp16", progress: ProgressFn | None = None,
                            device: torch.device | str | None = None, cancel: CancelToken | None = None,
                            options: dict | None = None) -> EngineEntry:
    """The ControlNet file's engine for `profile`, registered in the workspace's manifest under the
    file's sha256 (entry.checkpoint), its architecture in entry.details["controlnet"]."""
    progress = progress or no_progress
    profile.validate()
    problem = controlnet_build_problem(backend, precision, profile)
    if problem:
        raise problem
    cancel = cancel or CancelToken()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    progress("reading the ControlNet", 0.0)
    source = ControlNetFile.open(controlnet_path)
    family = source.family
    if not any(family.config.transformer_depth) and not family.config.transformer_depth_middle:
        # the export drops an input nothing reads, and every engine takes the same inputs as the UNet's calls
        raise ControlNetBuildRefused(f"{source.path.name} has no attention layers (as SDXL's 'small' ControlNets): "
                                     "it never reads the text conditioning, which its engine could not take; "
                                     "it runs in PyTorch")
    with exclusive_build(workspace) as manifest:
        started = time.monotonic()
        weights = onnx_weights(precision)
        exported = ensure_onnx(source, workspace, weights, device, _scaled(progress, 0.0, 0.3), cancel)
        checkpoint = replace(source.checkpoint, weights=exported.record.digest)
        cancel.raise_if_cancelled()
        progress("verify: ONNX Runtime against PyTorch", 0.3)
        reference = reference_unet(source, device)
        onnx_engine = OnnxRuntimeBackend().load(exported.onnx_path, "onnx", family, profile, device=device.type)
        onnx_accuracy = _check(onnx_engine, reference, family, profile, weights, device,
                               f"the ONNX export ({exported.onnx_path})")
        cancel.raise_if_cancelled()
        request = BuildRequest(exported.onnx_path, family, profile, precision, module=reference,
                               device=device.type, options=dict(options or {}))

        def verify(staged: Path, entry_id: str, outcome: BuildOutcome) -> dict[str, float]:
            progress(f"verify: {backend.name} engine against PyTorch", 0.9)
            engine = backend.load(staged, entry_id, family, profile, device=device.type)
            return _check(engine, reference, family, profile, outcome.precision, device,
                          f"the {backend.name} engine").as_dict()
        return build_and_register(workspace, manifest, backend, request, checkpoint, exported, onnx_accuracy,
                                  started, verify, progress, cancel, {CONFIG_KEY: family.config.as_dict()})
