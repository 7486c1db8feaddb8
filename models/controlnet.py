"""A ControlNet with the state-dict layout of sd-webui-controlnet's `scripts/cldm.py: ControlNet`.

The encoder half of the UNet (models/unet.py's blocks, so its keys are the UNet's), plus what
ControlNet adds: `input_hint_block` (the control image, 8x the latent's size, down to the latent),
one 1x1 `zero_convs.N` per input block and `middle_block_out` after the middle block. Its output is
the residual list cldm's forward returns: one per input block, then the middle block's, which are
exactly the UNet's control inputs (UNetConfig.control_shapes without the adapter features).

The architecture is read off the weights (`config_from_state_dict`), with the rules
sd-webui-controlnet's model guess follows for what weights cannot show: a model without `label_emb`
(SD1.x/SD2.x layout) uses 8 heads, one with it (SDXL layout) 64 channels per head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from torch import nn

from sd_unet_trt.errors import UserError
from sd_unet_trt.models import unet as arch
from sd_unet_trt.models.controlnet_diffusers import is_diffusers_layout, to_original_layout
from sd_unet_trt.models.unet import (Downsample, ResBlock, SpatialTransformer, TimestepEmbedSequential, randomize_,
                                     timestep_embedding)

PREFIX = "control_model."  # how sd-webui-controlnet's own .pth/.safetensors files store it
HINT_CONVS = ((16, 1), (16, 1), (32, 2), (32, 1), (96, 2), (96, 1), (256, 2))  # (out channels, stride), then -> model


class UnsupportedControlNet(UserError, ValueError):
    """The file is no ControlNet this project can build engines of; the message names what it is."""


@dataclass(frozen=True)
class ControlNetConfig(arch.UNetConfig):
    hint_channels: int = 3  # the control image's channels (3 for RGB; 4-5 for a few models)

    def residual_shapes(self, rows: int, latent_h: int, latent_w: int) -> list[tuple[int, int, int, int]]:
        """Shapes of the outputs: one per input block (the UNet's skips), then the middle block's."""
        return self.control_shapes(rows, latent_h, latent_w)[:len(self.skips()) + 1]

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> "ControlNetConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


class ControlNetModel(nn.Module):
    """forward(x, hint, timesteps, context, y=None) -> residuals, like cldm's ControlNet.forward."""

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = c = config
        mc, ted = c.model_channels, c.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, ted), nn.SiLU(), nn.Linear(ted, ted))
        if c.adm_in_channels:
            self.label_emb = nn.Sequential(nn.Sequential(nn.Linear(c.adm_in_channels, ted), nn.SiLU(), nn.Linear(ted, ted)))
        hint: list[nn.Module] = []
        channels = c.hint_channels
        for out, stride in HINT_CONVS + ((mc, 1),):
            hint += [nn.Conv2d(channels, out, 3, padding=1, stride=stride), nn.SiLU()]
            channels = out
        self.input_hint_block = TimestepEmbedSequential(hint[:-1])  # no SiLU after the last conv

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            heads, dim_head = c.heads(ch)
            return SpatialTransformer(ch, heads, dim_head, depth, c.context_dim, c.use_linear_in_transformer)

        def zero_conv(ch: int) -> TimestepEmbedSequential:
            return TimestepEmbedSequential([nn.Conv2d(ch, ch, 1)])

        self.input_blocks = nn.ModuleList([TimestepEmbedSequential([nn.Conv2d(c.in_channels, mc, 3, padding=1)])])
        self.zero_convs = nn.ModuleList([zero_conv(mc)])
        ch = mc
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, ted, mult * mc)]
                ch = mult * mc
                if c.transformer_depth[level]:
                    layers.append(transformer(ch, c.transformer_depth[level]))
                self.input_blocks.append(TimestepEmbedSequential(layers))
                self.zero_convs.append(zero_conv(ch))
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential([Downsample(ch)]))
                self.zero_convs.append(zero_conv(ch))
        self.middle_block = TimestepEmbedSequential(
            [ResBlock(ch, ted, ch), transformer(ch, c.transformer_depth_middle), ResBlock(ch, ted, ch)])
        self.middle_block_out = zero_conv(ch)

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None) -> list[torch.Tensor]:
        dtype = self.middle_block_out[0].weight.dtype
        # cldm casts the timesteps to its own dtype before embedding them: in fp16 a fractional
        # sampler timestep is rounded (946.3 -> 946.5), and the engines must see the same
        emb = self.time_embed(timestep_embedding(timesteps.to(dtype), self.config.model_channels).to(dtype))
        context = context.to(dtype)
        # the hint block sees the time embedding before the label embedding joins it, as in cldm
        guided = self.input_hint_block(hint.to(dtype), emb, context)
        if self.config.adm_in_channels:
            if y is None:
                raise ValueError("this ControlNet needs y (SDXL's pooled text and size conditioning)")
            emb = emb + self.label_emb(y.to(dtype))
        h, outs = x.to(dtype), []
        for i, (block, zero_conv) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided
            outs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h, emb, context))
        return [o.to(x.dtype) for o in outs]


class ControlNetCall(nn.Module):
    """A ControlNet with its engines' flat signature (x, timesteps, context[, y], hint): the hint is
    its engines' control input (trt_core/controlnet/family.py). What torch.export traces."""

    def __init__(self, model: nn.Module, has_y: bool):
        super().__init__()
        self.model, self.has_y = model, has_y

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                *rest: torch.Tensor) -> list[torch.Tensor]:
        return self.model(x, rest[-1], timesteps, context, rest[0] if self.has_y else None)


def _left_out(sd: Mapping[str, torch.Tensor]) -> str:
    """What a file that is no plain ControlNet holds, and why it is left out; "" for a ControlNet."""
    keys = set(sd)
    if "lora_controlnet" in keys:
        return "a Control-LoRA (its weights are added to the checkpoint's UNet at load, so they differ per checkpoint)"
    if any("lllite" in k for k in keys):
        return "a ControlNet-LLLite (it patches the UNet's own attention layers; there is no separate model to build)"
    if any(k.startswith(("image_proj.", "ip_adapter.")) for k in keys) or "ip_adapter" in keys:
        return "an IP-Adapter (it replaces the UNet's cross-attention inputs; there is no separate model to build)"
    if any("motion_modules" in k for k in keys):
        return "a SparseCtrl model (AnimateDiff's; it needs motion modules)"
    if "conv_in.weight" in keys or "style_embedding" in keys or "body.0.in_conv.weight" in keys \
            or any(k.startswith(("adapter.", "body.")) for k in keys):
        return "a T2I-Adapter (small and run once per generation, not per step: nothing for an engine to gain)"
    if "difference" in keys:
        return "a difference ControlNet (its weights are added to the checkpoint's UNet at load)"
    if "control_add_embedding.linear_1.bias" in keys:
        return "a ControlNet Union (its control-type embedding and condition fuser are not built)"
    if "input_hint_block.0.weight" not in keys or "input_blocks.0.0.weight" not in keys:
        sample = ", ".join(sorted(keys)[:3]) or "no tensors"
        return f"no ControlNet weights (keys start with {sample})"
    return ""


def controlnet_state_dict(state_dict: Mapping[str, torch.Tensor], name: str = "the file") -> dict[str, torch.Tensor]:
    """The ControlNet's weights without the `control_model.` prefix, in the original layout (a
    diffusers file renamed); UnsupportedControlNet names what any other kind of file is."""
    sd = {k[len(PREFIX):] if k.startswith(PREFIX) else k: v for k, v in state_dict.items()}
    if is_diffusers_layout(sd):
        sd, unknown = to_original_layout(sd)
        if unknown:
            raise UnsupportedControlNet(f"{name} is a ControlNet in diffusers' layout with layers a ControlNet does "
                                        f"not have ({', '.join(unknown[:3])}{', ...' if len(unknown) > 3 else ''}: "
                                        "a ControlNet Union?); no ControlNet engine is built of it")
    problem = _left_out(sd)
    if problem:
        raise UnsupportedControlNet(f"{name} is {problem}; no ControlNet engine is built of it"
                                    if not problem.startswith("no ") else f"{name} holds {problem}; "
                                    "no ControlNet engine is built of it")
    return sd


def config_from_state_dict(sd: Mapping[str, torch.Tensor], name: str = "the file") -> ControlNetConfig:
    """The architecture, read off the weights' names and shapes: the UNet encoder's sizes by the
    UNet's own reader (fed the keys it expects of an output layer), heads as sd-webui-controlnet
    decides them."""
    sd = controlnet_state_dict(sd, name)
    in_channels = sd["input_blocks.0.0.weight"].shape[1]
    shapes = {k: v for k, v in sd.items() if k.startswith(("input_blocks.", "middle_block.", "label_emb."))}
    shapes["out.2.weight"] = torch.empty(in_channels, 1, 1, 1, device="meta")  # the reader wants the UNet's output layer
    if not any(k.endswith("attn2.to_k.weight") for k in shapes):  # SDXL's small ControlNet: no attention at all
        shapes["middle_block.1.transformer_blocks.0.attn2.to_k.weight"] = torch.empty(1, 2048, device="meta")
    from sd_unet_trt.models.families import UnsupportedModelError, config_from_state_dict as unet_config
    try:
        found = unet_config(shapes)
    except UnsupportedModelError as e:
        raise UnsupportedControlNet(f"{name}: {str(e).removeprefix('not supported: ')}; no ControlNet engine is built "
                                    f"of it") from None
    depths = (found.transformer_depth, found.transformer_depth_middle)
    if not any(k.endswith("attn2.to_k.weight") for k in sd):  # the small one: its middle transformer has no blocks
        depths = (found.transformer_depth, 0)
    xl = "label_emb.0.0.weight" in sd
    context_dim = found.context_dim if any(k.endswith("attn2.to_k.weight") for k in sd) else (2048 if xl else 768)
    return ControlNetConfig(**{**found.__dict__, "transformer_depth": depths[0], "transformer_depth_middle": depths[1],
                               "context_dim": context_dim, "out_channels": in_channels,
                               "num_heads": 8, "num_head_channels": 64 if xl else -1,
                               "hint_channels": sd["input_hint_block.0.weight"].shape[1]})


def load_state_dict(config: ControlNetConfig, sd: Mapping[str, torch.Tensor], dtype: torch.dtype | None = None,
                    device: torch.device | str = "cpu", name: str = "the file") -> ControlNetModel:
    """Our ControlNet holding these weights (all of them: a missing or extra key is refused)."""
    with torch.device("meta"):
        model = ControlNetModel(config)
    tensors = {k: v.to(device=device, dtype=dtype or v.dtype) for k, v in controlnet_state_dict(sd, name).items()}
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as e:
        raise UnsupportedControlNet(f"{name}: its weights do not fit a ControlNet read off them "
                                    f"({' '.join(str(e).split())[:300]})") from None
    return model.eval().requires_grad_(False)


def seeded_controlnet(config: ControlNetConfig, seed: int = 0) -> ControlNetModel:
    """Seeded random weights, none zero (real ControlNets start with zero convolutions, which would
    make every residual vanish and every check pass)."""
    return randomize_(ControlNetModel(config), seed)


# The tiny test UNet's ControlNet: the sizes tests/real_webui/tiny_controlnet gives cldm.ControlNet.
TINY = ControlNetConfig(**{**arch.TINY.__dict__, "hint_channels": 3})
TINY_XL = ControlNetConfig(**{**arch.TINY_XL.__dict__, "hint_channels": 3})
SD15 = ControlNetConfig(**{**arch.SD15.__dict__, "hint_channels": 3})
SDXL = ControlNetConfig(**{**arch.SDXL.__dict__, "hint_channels": 3})
