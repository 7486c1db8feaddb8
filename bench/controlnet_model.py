"""A ControlNet of the real architecture for a UNet config (bench only): the project's own model
(models/controlnet.py, sd-webui-controlnet's layout) with random weights drawn on the device, and
the control list the UNet takes from its residuals (zeros for T2I-Adapter's features: no adapter
in this bench)."""
from __future__ import annotations

import torch

from workloads import randomized_on

from sd_unet_trt.models.controlnet import ControlNetConfig, ControlNetModel  # noqa: E402
from sd_unet_trt.models.unet import UNetConfig  # noqa: E402


def controlnet_config(config: UNetConfig) -> ControlNetConfig:
    return ControlNetConfig(**config.__dict__, hint_channels=3)


def make_controlnet(config: UNetConfig, device: torch.device, seed: int = 1) -> ControlNetModel:
    """Random weights on the device, none zero (a trained ControlNet's zero convolutions are not)."""
    return randomized_on(lambda: ControlNetModel(controlnet_config(config)), device, seed)


def unet_control(residuals: list[torch.Tensor], config: UNetConfig) -> list[torch.Tensor]:
    """What a UNet engine with ControlNet inputs takes: the residuals, then zero adapter features."""
    return list(residuals) + [torch.zeros_like(residuals[i]) for i in config.adapter_blocks()]
