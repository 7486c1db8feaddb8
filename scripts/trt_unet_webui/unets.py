"""on_list_unets: one "[TRT] <checkpoint>" option per WebUI checkpoint that has ready engines.

Options are cached by (label, sha256) so that refreshing the list keeps the same objects: the
WebUI compares options by identity and would otherwise reload the engines every generation.
"""
from __future__ import annotations

import logging

from modules import devices, sd_models, sd_unet

from sd_unet_trt.trt_core.catalog import catalog
from sd_unet_trt.trt_core.controlnet import is_controlnet_entry
from sd_unet_trt.trt_core.hook_policy import manifest_signature
from sd_unet_trt.scripts.trt_unet_webui.hook import TrtUnetOption
from sd_unet_trt.scripts.trt_unet_webui.workspace import workspace

log = logging.getLogger("sd_unet_trt")
LABEL = "[TRT] {}"
_options: dict[tuple[str, str], TrtUnetOption] = {}
_listed_signature: list = [None]


def checkpoints_with_engines() -> dict[str, str]:
    """sha256 -> the checkpoint name recorded with its ready engines."""
    out = {}
    for item in catalog(workspace(), devices.device.type):
        if item.status.ready and not is_controlnet_entry(item.entry):  # a ControlNet file's are no UNet's
            out[item.entry.checkpoint.sha256] = item.entry.checkpoint.name
    return out


def webui_checkpoint(sha256: str, name: str):
    """The WebUI's checkpoint of these engines: by its (cached) hash, else by name (the loaded
    model's hash is checked again on activation)."""
    infos = list(sd_models.checkpoints_list.values())
    by_hash = [info for info in infos if info.sha256 == sha256]
    if by_hash:
        return by_hash[0]
    return next((info for info in infos if info.sha256 is None and name in (info.model_name, info.name)), None)


def listing_signature():
    """Changes when engines or the WebUI's checkpoint list change."""
    return manifest_signature(workspace()), tuple(sd_models.checkpoints_list)


def list_unets(options: list) -> None:
    _listed_signature[0] = listing_signature()
    try:
        found = checkpoints_with_engines()
    except Exception as e:
        log.warning("TensorRT: cannot read the engine manifest (%s); no engine UNets listed", e)
        return
    for sha256, name in found.items():
        info = webui_checkpoint(sha256, name)
        if info is None:
            continue
        key = (LABEL.format(info.model_name), sha256)
        if key not in _options:
            _options[key] = TrtUnetOption(key[0], info.model_name, sha256)
        options.append(_options[key])


def refresh_if_changed() -> None:
    """Before a generation: a build, a delete or a new checkpoint since the last listing."""
    if listing_signature() != _listed_signature[0]:
        sd_unet.list_unets()
