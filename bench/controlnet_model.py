"""A ControlNet of the real architecture for a UNet config (bench only): the UNet's encoder (time
and label embeddings, input blocks, middle block) with the hint encoder added after the first
block and a 1x1 output convolution per skip connection and after the middle block, as ControlNet's
published architecture has them. Its output is the list UNetModel's `control` takes: its residuals,
then zeros for T2I-Adapter's features (no adapter in this bench)."""
from __future__ import annotations

import torch
from torch import nn

from workloads import randomized_on

from sd_unet_trt.models.unet import UNetConfig, UNetModel, timestep_embedding  # noqa: E402

HINT_CHANNELS = (16, 16, 32, 32, 96, 96, 256)  # the hint encoder's widths; stride 2 where they grow
HINT_STRIDES = (1, 1, 2, 1, 2, 1, 2)


class ControlNetModel(nn.Module):
    def __init__(self, config: UNetConfig, hint_channels: int = 3):
        super().__init__()
        self.config = config
        unet = UNetModel(config)
        self.time_embed, self.input_blocks, self.middle_block = unet.time_embed, unet.input_blocks, unet.middle_block
        if config.adm_in_channels:
            self.label_emb = unet.label_emb
        layers, width = [], hint_channels
        for out, stride in zip(HINT_CHANNELS, HINT_STRIDES):
            layers += [nn.Conv2d(width, out, 3, stride=stride, padding=1), nn.SiLU()]
            width = out
        self.input_hint_block = nn.Sequential(*layers, nn.Conv2d(width, config.model_channels, 3, padding=1))
        skips = config.skips()
        self.zero_convs = nn.ModuleList(nn.Conv2d(ch, ch, 1) for ch, _ in skips)
        self.middle_block_out = nn.Conv2d(skips[-1][0], skips[-1][0], 1)

    def forward(self, x, hint, timesteps, context, y=None) -> list[torch.Tensor]:
        dtype = self.middle_block_out.weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        if self.config.adm_in_channels:
            emb = emb + self.label_emb(y.to(dtype))
        guided = self.input_hint_block(hint.to(dtype))
        h, outs = x.to(dtype), []
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context.to(dtype))
            if i == 0:
                h = h + guided
            outs.append(self.zero_convs[i](h))
        h = self.middle_block(h, emb, context.to(dtype))
        no_adapter = [torch.zeros_like(outs[i]) for i in self.config.adapter_blocks()]
        return outs + [self.middle_block_out(h)] + no_adapter


def make_controlnet(config: UNetConfig, device: torch.device, seed: int = 1) -> ControlNetModel:
    """Random weights on the device, none zero (a trained ControlNet's zero convolutions are not)."""
    return randomized_on(lambda: ControlNetModel(config), device, seed)
