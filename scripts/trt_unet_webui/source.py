"""The WebUI as the tab's ModelSource: the loaded checkpoint's UNet, identity and family."""
from __future__ import annotations

from typing import Callable, TypeVar

from modules import call_queue, devices, sd_models

from sd_unet_trt.models.families import UnsupportedModelError, detect_family_of_module
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.scripts.trt_unet_webui.workspace import workspace
from sd_unet_trt.ui.source import LoadedModel, ModelSource, NoModelLoaded

T = TypeVar("T")


def loaded_sd_model():
    """The loaded model without triggering a load (shared.sd_model would load one)."""
    return sd_models.model_data.sd_model


def checkpoint_id(sd_model) -> CheckpointId:
    info = sd_model.sd_checkpoint_info
    if not info.sha256:
        info.calculate_shorthash()  # the WebUI hashes lazily; this caches it for later
    if not info.sha256:
        raise NoModelLoaded(f"cannot hash checkpoint {info.filename}; engines are keyed by the checkpoint's sha256")
    return CheckpointId.of(info.sha256, info.model_name)


def current_model() -> LoadedModel:
    sd_model = loaded_sd_model()
    if sd_model is None:
        raise NoModelLoaded("no checkpoint is loaded; pick one in the checkpoint list at the top of the page")
    if getattr(sd_model, "is_sd3", False):
        raise UnsupportedModelError("not supported: SD3 checkpoints (the WebUI runs them without SD Unet hooks)")
    unet = sd_model.model.diffusion_model
    prediction = "v" if getattr(sd_model, "parameterization", "eps") == "v" else "eps"
    return LoadedModel(unet, checkpoint_id(sd_model), detect_family_of_module(unet, prediction))


def run_exclusive(work: Callable[[], T]) -> T:
    """Model-touching work waits for the generation in progress, and generations wait for it."""
    with call_queue.queue_lock:
        return work()


def model_source() -> ModelSource:
    return ModelSource(workspace(), current_model, devices.device.type, run_exclusive)
