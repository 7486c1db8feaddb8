"""What a ControlNet engine takes and gives, in the terms the UNet's profiles, backends and router
use for a model family (models/families.py: ModelFamily), so they serve ControlNets unchanged.

A ControlNet call is a UNet call (x, timesteps, context, y) plus the control image `hint`, which
takes the place of a UNet family's control inputs: `Profile.covers` and `input_shapes`, the
backends' `control_inputs` and the router's row chunks treat it as one. Its outputs are the
residuals, one per input block and the middle block's (ControlNetConfig.residual_shapes).

Manifest entries of ControlNets carry a family name starting with FAMILY_PREFIX (never a UNet
family's name, so the UNet's code cannot take one for its own) and their architecture in
`details["controlnet"]`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from sd_unet_trt.models.controlnet import ControlNetCall, ControlNetConfig
from sd_unet_trt.trt_core.manifest import EngineEntry
from sd_unet_trt.trt_core.profiles import LATENT_SCALE

FAMILY_PREFIX = "controlnet-model-"
CONFIG_KEY = "controlnet"  # the entry's details key holding the architecture (ControlNetConfig.as_dict)
# the UNet families a ControlNet's inputs match, by (context width, y width): for names and labels only
_KINDS = {(768, None): ("sd1", "SD 1.x"), (1024, None): ("sd2", "SD 2.x"), (2048, 2816): ("sdxl", "SDXL")}


@dataclass(frozen=True)
class ControlNetFamily:
    config: ControlNetConfig
    controlnet = True  # its "control input" is the hint (see the module's docstring)
    control_label = "the control image (hint)"

    @property
    def kind(self) -> tuple[str, str]:
        return _KINDS.get((self.context_dim, self.y_dim), ("other", "other"))

    @property
    def name(self) -> str:
        return FAMILY_PREFIX + self.kind[0]

    @property
    def label(self) -> str:
        c = self.config
        size = "" if c.model_channels in (320,) else f", {c.model_channels} base channels"
        return f"{self.kind[1]} ControlNet{size}"

    @property
    def base_config(self) -> ControlNetConfig:
        """Its sizes, under the name the UNet family's estimate reads (trt_core/estimate.py)."""
        return self.config

    @property
    def native_px(self) -> int:
        """The size its UNets are trained at (test-size models: the tiny UNet's 64 px)."""
        if self.config.model_channels < 320:
            return 64
        return 1024 if self.kind[0] == "sdxl" else 512

    @property
    def in_channels(self) -> int:
        return self.config.in_channels

    @property
    def context_dim(self) -> int:
        return self.config.context_dim

    @property
    def y_dim(self) -> int | None:
        return self.config.adm_in_channels

    @property
    def input_names(self) -> tuple[str, ...]:
        """In the order of cldm's ControlNet.forward."""
        return ("x", "hint", "timesteps", "context") + (("y",) if self.y_dim else ())

    @property
    def control_names(self) -> tuple[str, ...]:
        return ("hint",)

    def control_shapes(self, rows: int, latent_h: int, latent_w: int) -> list[tuple[int, int, int, int]]:
        """The hint's shape: the control image at the latent's size in pixels."""
        return [(rows, self.config.hint_channels, latent_h * LATENT_SCALE, latent_w * LATENT_SCALE)]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(f"residual_{i}" for i in range(len(self.config.skips()) + 1))

    def output_shapes(self, rows: int, latent_h: int, latent_w: int) -> list[tuple[int, int, int, int]]:
        return self.config.residual_shapes(rows, latent_h, latent_w)


    def call_module(self, module: torch.nn.Module) -> torch.nn.Module:
        return ControlNetCall(module, self.y_dim is not None)


def is_controlnet_entry(entry: EngineEntry) -> bool:
    return entry.family.startswith(FAMILY_PREFIX)


def family_of_entry(entry: EngineEntry) -> ControlNetFamily:
    """The ControlNet family an entry records; ValueError when its architecture is missing or bad."""
    try:
        return ControlNetFamily(ControlNetConfig.from_dict(entry.details[CONFIG_KEY]))
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{entry.id}: no readable ControlNet architecture in the entry ({e})") from None
