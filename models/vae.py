"""The decoder of Stable Diffusion's VAE (ldm's AutoencoderKL: post_quant_conv + Decoder with
ch 128, ch_mult (1, 2, 4, 4), two ResNet blocks per level plus one on the way up, one attention block
in the middle), the same architecture for SD1.x, SD2.x and SDXL. Used with random weights to turn
a final latent into an image, so a precision's cost can be read as the decoded image's PSNR
(trt_core/quality.py): a relative figure, not a trained decoder's."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sd_unet_trt.models.unet import group_norm, randomize_

# What the sampler's latent is divided by before decoding (the VAE's scale_factor).
LATENT_SCALE = {"sdxl": 0.13025, "sdxl-refiner": 0.13025, "tiny-xl": 0.13025}
DEFAULT_LATENT_SCALE = 0.18215


class ResnetBlock(nn.Module):
    def __init__(self, channels: int, out_channels: int):
        super().__init__()
        self.norm1, self.conv1 = group_norm(channels, 1e-6), nn.Conv2d(channels, out_channels, 3, padding=1)
        self.norm2, self.conv2 = group_norm(out_channels, 1e-6), nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(channels, out_channels, 1) if channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels, 1e-6)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        n = self.norm(x)
        q, k, v = (layer(n).reshape(b, 1, c, h * w).transpose(2, 3) for layer in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).transpose(2, 3).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Decoder(nn.Module):
    def __init__(self, z_channels: int = 4, ch: int = 128, ch_mult: tuple[int, ...] = (1, 2, 4, 4),
                 num_res_blocks: int = 2):
        super().__init__()
        channels = ch * ch_mult[-1]
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)
        self.conv_in = nn.Conv2d(z_channels, channels, 3, padding=1)
        self.mid = nn.Sequential(ResnetBlock(channels, channels), AttnBlock(channels), ResnetBlock(channels, channels))
        levels = []
        for level in reversed(range(len(ch_mult))):
            out = ch * ch_mult[level]
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(channels, out))
                channels = out
            if level:
                blocks += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1)]
            levels.append(nn.Sequential(*blocks))
        self.up = nn.Sequential(*levels)
        self.norm_out, self.conv_out = group_norm(channels, 1e-6), nn.Conv2d(channels, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.up(self.mid(self.conv_in(self.post_quant_conv(z))))
        return self.conv_out(F.silu(self.norm_out(h)))


def seeded_decoder(seed: int = 0) -> Decoder:
    return randomize_(Decoder(), seed)


def decode(decoder: Decoder, latent: torch.Tensor, family_name: str) -> torch.Tensor:
    """The image in [0, 1] (float32) that `decoder` makes of a sampler's final latent."""
    scale = LATENT_SCALE.get(family_name, DEFAULT_LATENT_SCALE)
    with torch.no_grad():
        image = decoder(latent.float() / scale)
    return ((image + 1) / 2).clamp(0, 1)
