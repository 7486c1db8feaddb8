"""A test-only WebUI extension for the real-WebUI check: tiny ControlNets for the tiny checkpoint.

sd-webui-controlnet builds every SD1.x ControlNet with SD1.5's sizes (its controlnet_default_config),
so a ControlNet for the tiny test checkpoint (32 base channels) cannot load unchanged. At start-up
this sets that config to the tiny checkpoint's UNet sizes and, when models/ControlNet lacks them,
writes two tiny ControlNets built by sd-webui-controlnet's own model code (scripts/cldm.py) with
seeded random weights, none zero (its zero convolutions would make the residuals vanish), and a tiny
T2I-Adapter (scripts/adapter.py; the extension sizes adapters from their weights, so no config
changes) of the tiny UNet's widths.
Never installed anywhere but the harness.
"""
import math
import os
import sys

import torch
from safetensors.torch import save_file

from modules import paths, script_callbacks

TINY = {"model_channels": 32, "num_heads": 8, "channel_mult": [1, 2, 4, 4], "attention_resolutions": [1, 2, 4],
        "transformer_depth": [1, 1, 1, 0], "num_res_blocks": 2, "context_dim": 768}
NAMES = ("tiny_control_a", "tiny_control_b")
ADAPTER = "tiny_t2iadapter"


def module_ending(suffix: str):
    return next((m for name, m in list(sys.modules.items()) if name.endswith(suffix) and m is not None), None)


def build(path: str, seed: int) -> None:
    cldm = module_ending("cldm")
    guess = module_ending("controlnet_model_guess")
    config = dict(guess.controlnet_default_config, hint_channels=3, use_fp16=False)
    config.pop("global_average_pooling", None)
    model = randomized(cldm.ControlNet(**config), seed)
    save_file({f"control_model.{k}": v.contiguous() for k, v in model.state_dict().items()}, path)


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    if any(p.is_meta for p in model.parameters()):  # built while the WebUI loads a model on the meta device
        model = model.to_empty(device="cpu")
    if any(b.is_meta for b in model.buffers()):
        raise RuntimeError(f"the tiny {type(model).__name__} has buffers on the meta device")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p[0].numel()))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05 + (1.0 if "norm" in name else 0.0))
    return model


def build_adapter(path: str, seed: int) -> None:
    """An SD1.x T2I-Adapter (pixel unshuffle by 8: cin 3 * 8 * 8) whose features have the tiny
    UNet's widths after input blocks 2, 5, 8 and 11."""
    adapter = module_ending("scripts.adapter")
    widths = [TINY["model_channels"] * m for m in TINY["channel_mult"]]
    model = randomized(adapter.Adapter(channels=widths, nums_rb=2, cin=3 * 8 * 8, ksize=1, sk=True, use_conv=False,
                                       is_sdxl=False), seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)


def on_started(*_):
    guess = module_ending("controlnet_model_guess")
    if guess is None:
        print("[tiny-controlnet] sd-webui-controlnet is not loaded", flush=True)
        return
    guess.controlnet_default_config.update(TINY)
    folder = os.path.join(paths.models_path, "ControlNet")
    os.makedirs(folder, exist_ok=True)
    for seed, name in enumerate(NAMES, start=1):
        path = os.path.join(folder, f"{name}.safetensors")
        if not os.path.exists(path):
            build(path, seed)
    path = os.path.join(folder, f"{ADAPTER}.safetensors")
    if not os.path.exists(path):
        build_adapter(path, 3)
    print(f"[tiny-controlnet] ControlNets and a T2I-Adapter for the tiny checkpoint in {folder}", flush=True)


script_callbacks.on_app_started(on_started)
