"""The WebUI as the tab's ModelSource: what a build uses is the checkpoint the user selected, read
from its file. Not the model in memory: after a refiner generation the WebUI keeps the refiner
loaded until the next generation, and after a LoRA generation the loaded UNet holds the LoRA
merged into its weights (see trt_core.unet_source)."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, TypeVar

from modules import call_queue, devices, sd_models, sd_unet, shared

from sd_unet_trt.models.families import UnsupportedModelError
from sd_unet_trt.scripts.trt_unet_webui.controlnet_units import listed_models
from sd_unet_trt.scripts.trt_unet_webui.workspace import workspace
from sd_unet_trt.trt_core.checkpoint_file import CheckpointError, FileStamp, family_of_file
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.unet_source import CheckpointUNet
from sd_unet_trt.ui.source import ModelSource, NoModelLoaded

T = TypeVar("T")


def loaded_sd_model():
    """The loaded model without triggering a load (shared.sd_model would load one)."""
    return sd_models.model_data.sd_model


def selected_checkpoint():
    """The checkpoint in the WebUI's checkpoint list (the one the next generation uses)."""
    info = sd_models.checkpoint_aliases.get(shared.opts.sd_model_checkpoint)
    if info is None:
        raise NoModelLoaded("no checkpoint is selected; pick one in the checkpoint list at the top of the page")
    return info


def prediction_of(info) -> str:
    """eps or v, as the WebUI decided when it loaded this checkpoint (eps when it is not loaded:
    the engine computes the same either way, only its family's label would differ)."""
    models = [loaded_sd_model(), *getattr(sd_models.model_data, "loaded_sd_models", [])]
    for model in models:
        if model is not None and getattr(model.sd_checkpoint_info, "filename", None) == info.filename:
            if getattr(model, "is_sd3", False):
                raise UnsupportedModelError("not supported: SD3 checkpoints (the WebUI runs them without SD Unet hooks)")
            return "v" if getattr(model, "parameterization", "eps") == "v" else "eps"
    return "eps"


@functools.lru_cache(maxsize=8)
def _family(path: str, stamp: FileStamp, prediction: str):
    return family_of_file(path, prediction)


def current_model() -> CheckpointUNet:
    info = selected_checkpoint()
    path = Path(info.filename)
    try:
        stamp = FileStamp.of(path)
    except OSError as e:
        raise NoModelLoaded(f"checkpoint {info.name} cannot be read: {e.strerror}") from None
    if not info.sha256:
        info.calculate_shorthash()  # the WebUI hashes lazily and caches it by modification time
    if not info.sha256:
        raise NoModelLoaded(f"cannot hash checkpoint {info.name}; engines are keyed by the checkpoint's sha256")
    prediction = prediction_of(info)
    try:
        family = _family(str(path), stamp, prediction)
    except CheckpointError as e:
        raise UnsupportedModelError(f"not supported: {e}") from None
    return CheckpointUNet(path, CheckpointId.of(info.sha256, info.model_name), family, stamp, prediction)


def run_exclusive(work: Callable[[], T]) -> T:
    """Model-touching work waits for the generation in progress, and generations wait for it."""
    with call_queue.queue_lock:
        return work()


def run_with_free_gpu(work: Callable[[], T]) -> T:
    """A build: under the queue lock, with the WebUI's model in RAM meanwhile, so the export, the
    checks and the engine build have the GPU's memory (an SDXL build beside a loaded SDXL model
    runs out of it on most cards). The model goes back as it was, UNet placement included."""
    with call_queue.queue_lock:
        model = loaded_sd_model()
        if model is None or devices.device.type != "cuda":
            return work()
        unet = model.model.diffusion_model
        unet_on_cpu = sd_unet.current_unet is not None and not model.lowvram
        sd_models.send_model_to_cpu(model)
        try:
            return work()
        finally:
            sd_models.send_model_to_device(model)
            if unet_on_cpu:
                unet.to(devices.cpu)  # as apply_unet left it while an engine UNet is active
            devices.torch_gc()


def model_source() -> ModelSource:
    return ModelSource(workspace(), current_model, devices.device.type, run_with_free_gpu, listed_models)
