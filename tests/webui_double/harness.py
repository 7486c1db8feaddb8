"""Fixtures' building blocks: a WebUI-double session with the extension loaded like the WebUI
loads it, tiny checkpoints, and an Engine that runs a PyTorch UNet (for the families the tiny
model has no ONNX family for: 9-channel inpainting, a UNet taking y)."""
from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import torch

from tests.webui_double import ROOT, install

install()

from models.families import TINY, ModelFamily  # noqa: E402
from models.unet import seeded_unet  # noqa: E402
from modules import (devices, errors, lowvram, paths_internal, processing, script_callbacks, scripts,  # noqa: E402
                     sd_hijack, sd_models, sd_unet, shared)
from trt_core.backends.base import Engine  # noqa: E402
from trt_core.profiles import Profile  # noqa: E402

SCRIPT = ROOT / "scripts" / "trt_unet.py"


def load_extension():
    """scripts/trt_unet.py executed as script_loading.load_module does (spec from file location)."""
    script_callbacks.clear_callbacks()
    spec = importlib.util.spec_from_file_location(SCRIPT.name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    script_classes = [v for v in vars(module).values()
                      if isinstance(v, type) and issubclass(v, scripts.Script) and v is not scripts.Script]
    return module, scripts.ScriptRunner([cls() for cls in script_classes])


def webui_unet(family: ModelFamily = TINY, seed: int = 0, sgm: bool = False) -> torch.nn.Module:
    """The WebUI's (patched) ldm/sgm UNetModel class holding seeded weights."""
    ours = seeded_unet(family.unet_config(), seed)
    cls = sd_hijack.SgmUNetModel if sgm else sd_hijack.LdmUNetModel
    unet = cls(family.unet_config())
    unet.load_state_dict(ours.state_dict())
    return unet.eval().requires_grad_(False)


def checkpoint(name: str, sha256: str) -> sd_models.CheckpointInfo:
    info = sd_models.CheckpointInfo(f"/models/Stable-diffusion/{name}.safetensors", sha256)
    info.register()
    return info


def load(unet, info, sgm: bool = False, **fields) -> processing.SdModel:
    model = processing.SdModel(unet, info, sgm=sgm)
    for key, value in fields.items():
        setattr(model, key, value)
    return sd_models.load_model(model)


def reset(models_path: Path) -> None:
    paths_internal.models_path = str(models_path)
    errors.reported.clear()
    processing.ORDER.clear()
    sd_models.checkpoints_list.clear()
    sd_models.model_data.sd_model = None
    shared.sd_model = None
    shared.opts.data["sd_unet"] = "Automatic"
    shared.opts.data["pad_cond_uncond"] = False
    shared.opts.data["batch_cond_uncond"] = True
    shared.cmd_opts.medvram = shared.cmd_opts.lowvram = False
    shared.state.interrupted = False
    lowvram.module_in_gpu = None
    sd_unet.unet_options.clear()
    sd_unet.current_unet_option = None
    sd_unet.current_unet = None
    devices.device = torch.device("cpu")


class TorchEngine(Engine):
    """A PyTorch UNet behind the Engine interface, for families with no tiny ONNX build."""

    def __init__(self, name: str, family: ModelFamily, profile: Profile, unet: torch.nn.Module):
        self.name, self.family, self.profile, self.unet = name, family, profile, unet
        self.calls = 0

    def __call__(self, x, timesteps, context, y=None):
        self.calls += 1
        return self.unet(x, timesteps.float(), context, y).to(x.dtype)


def family_like_tiny(**changes) -> ModelFamily:
    return replace(TINY, name="tiny-test", **changes)
