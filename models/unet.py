"""A Stable Diffusion UNet with the state-dict layout of ldm's / sgm's `openaimodel.UNetModel`.

The same class holds SD1.x, SD2.x, SDXL base/refiner and the tiny test model; a checkpoint's
`model.diffusion_model.*` weights load into it unchanged. Exporting this module instead of the
WebUI's instance keeps export free of the WebUI's hijacks and device juggling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    # per level: how many transformer blocks follow each ResBlock (0 = no attention there)
    transformer_depth: tuple[int, ...] = (1, 1, 1, 0)
    transformer_depth_middle: int = 1
    context_dim: int = 768
    num_heads: int = 8  # used when num_head_channels == -1 (SD1.x)
    num_head_channels: int = -1  # SD2.x / SDXL: 64 channels per head
    use_linear_in_transformer: bool = False
    adm_in_channels: int | None = None  # SDXL's pooled text + size conditioning (y)

    def skips(self) -> list[tuple[int, int]]:
        """(channels, downsamplings) of each input block's output: the skip connections the output
        blocks take, in order, and where ControlNet adds its residuals."""
        out = [(self.model_channels, 0)]
        for level, mult in enumerate(self.channel_mult):
            out += [(mult * self.model_channels, level)] * self.num_res_blocks
            if level != len(self.channel_mult) - 1:
                out.append((mult * self.model_channels, level + 1))
        return out

    def output_channels(self) -> list[int]:
        """Channels of each output block's output, in order."""
        return [mult * self.model_channels for mult in reversed(self.channel_mult) for _ in range(self.num_res_blocks + 1)]

    def adapter_blocks(self) -> list[int]:
        """The input blocks after which sd-webui-controlnet adds T2I-Adapter features to the
        encoder's hidden state (its `t2i_injection`; SDXL's fourth feature joins the middle block's
        residual)."""
        injection = (3, 5, 8) if self.adm_in_channels else (2, 5, 8, 11)
        return [i for i in injection if i < len(self.skips())]

    def control_shapes(self, rows: int, latent_h: int, latent_w: int) -> list[tuple[int, int, int, int]]:
        """Shapes of the UNet's control inputs for one call: ControlNet's residuals, one per skip
        connection and then the middle block's (13 for SD1.x/SD2.x, 10 for SDXL, as diffusers'
        down/mid block residuals), then T2I-Adapter's features, one per adapter block."""
        def size(n: int, downsamplings: int) -> int:
            for _ in range(downsamplings):
                n = (n + 1) // 2  # a stride-2 convolution with padding 1
            return n

        skips = self.skips()
        layout = skips + [skips[-1]] + [skips[i] for i in self.adapter_blocks()]
        return [(rows, ch, size(latent_h, d), size(latent_w, d)) for ch, d in layout]

    def heads(self, channels: int) -> tuple[int, int]:
        """(number of heads, channels per head) for a transformer of `channels` width."""
        if self.num_head_channels == -1:
            return self.num_heads, channels // self.num_heads
        return channels // self.num_head_channels, self.num_head_channels


SD15 = UNetConfig()
SD2 = UNetConfig(context_dim=1024, num_head_channels=64, use_linear_in_transformer=True)
SDXL = UNetConfig(channel_mult=(1, 2, 4), transformer_depth=(0, 2, 10), transformer_depth_middle=10,
                  context_dim=2048, num_head_channels=64, use_linear_in_transformer=True,
                  adm_in_channels=2816)
SDXL_REFINER = UNetConfig(model_channels=384, transformer_depth=(0, 4, 4, 0), transformer_depth_middle=4,
                          context_dim=1280, num_head_channels=64, use_linear_in_transformer=True,
                          adm_in_channels=2560)
# Same topology as shared/webui-testing/tiny.yaml: SD1.x blocks at 32 base channels.
TINY = UNetConfig(model_channels=32)
# SDXL's block types (linear projections, no attention at the first level, y) at test size.
TINY_XL = UNetConfig(model_channels=32, channel_mult=(1, 2), transformer_depth=(0, 1), transformer_depth_middle=1,
                     context_dim=2048, num_head_channels=64, use_linear_in_transformer=True, adm_in_channels=2816)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def group_norm(channels: int, eps: float = 1e-5) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=eps)


class ResBlock(nn.Module):
    def __init__(self, channels: int, emb_channels: int, out_channels: int):
        super().__init__()
        self.in_layers = nn.Sequential(group_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(group_norm(out_channels), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int | None, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or query_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        b = x.shape[0]
        q, k, v = (t.reshape(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1]))


class GEGLU(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 4), nn.Dropout(0.0), nn.Linear(dim * 4, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, None, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, use_linear: bool):
        super().__init__()
        inner = heads * dim_head
        self.use_linear = use_linear
        self.norm = group_norm(channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth))
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)
        if self.use_linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context)
        if self.use_linear:
            x = self.proj_out(x)
        x = x.transpose(1, 2).reshape(b, -1, h, w)
        if not self.use_linear:
            x = self.proj_out(x)
        return x + x_in


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, size: torch.Size | None = None) -> torch.Tensor:
        x = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        if size is not None:
            # The WebUI's `th.cat` patch resizes to the skip's size after this conv, which makes odd
            # latents (multiples of 8 px, not 64) work. Done unconditionally so that traced and
            # exported graphs do the same at every size; at even sizes it is an identity.
            x = F.interpolate(x, size=size, mode="nearest")
        return x


class TimestepEmbedSequential(nn.ModuleList):
    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: torch.Tensor,
                out_size: torch.Size | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, out_size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    """forward(x, timesteps, context, y=None) like the WebUI's UNet; returns eps or v."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        mc = c.model_channels
        ted = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if c.adm_in_channels:
            self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(c.adm_in_channels, ted), nn.SiLU(), nn.Linear(ted, ted)))

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            heads, dim_head = c.heads(ch)
            return SpatialTransformer(ch, heads, dim_head, depth, c.context_dim, c.use_linear_in_transformer)

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential([nn.Conv2d(c.in_channels, mc, 3, padding=1)])])
        skip_channels = [mc]
        ch = mc
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, ted, mult * mc)]
                ch = mult * mc
                if c.transformer_depth[level]:
                    layers.append(transformer(ch, c.transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(layers))
                skip_channels.append(ch)
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential([Downsample(ch)]))
                skip_channels.append(ch)

        self.middle_block = TimestepEmbedSequential(
            [ResBlock(ch, ted, ch), transformer(ch, c.transformer_depth_middle), ResBlock(ch, ted, ch)])

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(c.channel_mult))):
            for i in range(c.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), ted, mc * mult)]
                ch = mc * mult
                if c.transformer_depth[level]:
                    layers.append(transformer(ch, c.transformer_depth[level]))
                if level and i == c.num_res_blocks:
                    layers.append(Upsample(ch))
                self.output_blocks.append(TimestepEmbedSequential(layers))

        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(mc, c.out_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None, control: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """`control` (config.control_shapes): ControlNet's residuals, added to the skip connections
        and to the middle block's output, then T2I-Adapter's features, added to the hidden state
        after their blocks (so to those blocks' skips too), as sd-webui-controlnet adds them."""
        dtype = self.out[2].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.config.model_channels).to(dtype))
        if self.config.adm_in_channels:
            if y is None:
                raise ValueError("this UNet needs y (SDXL's pooled text and size conditioning)")
            emb = emb + self.label_emb(y.to(dtype))
        context = context.to(dtype)
        h = x.to(dtype)
        residuals, features = [], {}
        if control is not None:
            blocks = self.config.adapter_blocks()
            if len(control) != len(self.input_blocks) + 1 + len(blocks):
                raise ValueError(f"this UNet takes {len(self.input_blocks) + 1 + len(blocks)} control inputs "
                                 f"(ControlNet's residuals, T2I-Adapter's features), got {len(control)}")
            residuals = [c.to(dtype) for c in control[:len(self.input_blocks) + 1]]
            features = {i: c.to(dtype) for i, c in zip(blocks, control[len(self.input_blocks) + 1:])}
        skips = []
        for i, block in enumerate(self.input_blocks):
            h = block(h, emb, context)
            if i in features:
                h = h + features[i]
            skips.append(h)
        h = self.middle_block(h, emb, context)
        if residuals:
            skips = [s + r for s, r in zip(skips, residuals)]
            h = h + residuals[-1]
        for i, block in enumerate(self.output_blocks):
            h = torch.cat([h, skips.pop()], dim=1)
            # an Upsample at the end of this block must land on the next skip's size
            h = block(h, emb, context, skips[-1].shape[-2:] if skips else None)
        return self.out(h).to(x.dtype)


class UNetCall(nn.Module):
    """A UNet with a flat signature, its inputs in the family's `input_names` order (x, timesteps,
    context[, y][, control_0, ...]): what ONNX export and torch.export trace."""

    def __init__(self, unet: nn.Module, has_y: bool):
        super().__init__()
        self.unet, self.has_y = unet, has_y

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                *rest: torch.Tensor) -> torch.Tensor:
        y = rest[0] if self.has_y else None
        control = list(rest[1:] if self.has_y else rest)
        if control:
            return self.unet(x, timesteps, context, y, control)
        return self.unet(x, timesteps, context, y) if self.has_y else self.unet(x, timesteps, context)


def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Seeded random weights that make the output depend on every input (no zero-initialised layers)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p[0].numel()))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
            else:
                p.copy_(1.0 + torch.randn(p.shape, generator=generator) * 0.05)
    return module.eval()


def seeded_unet(config: UNetConfig, seed: int = 0) -> UNetModel:
    return randomize_(UNetModel(config), seed)
