"""Model families: what each UNet takes, and how to tell them apart from weights or a module."""
from __future__ import annotations

import dataclasses

from dataclasses import dataclass, replace
from typing import Mapping

import torch

from sd_unet_trt.errors import UserError
from sd_unet_trt.models import unet as arch

UNET_PREFIX = "model.diffusion_model."
CONTROLNET_SUFFIX = "-controlnet"  # a family's name for its engines with ControlNet inputs


class UnsupportedModelError(UserError, ValueError):
    """The weights are not a UNet of a family we can export."""


@dataclass(frozen=True)
class ModelFamily:
    name: str
    label: str
    context_dim: int
    y_dim: int | None
    in_channels: int
    prediction: str  # "eps" or "v"
    native_px: int  # the training resolution, the default profile's size
    base_config: arch.UNetConfig
    # engines of this family take ControlNet's residuals and T2I-Adapter's features as inputs too
    # (zeros when none is active)
    controlnet: bool = False

    @property
    def input_names(self) -> tuple[str, ...]:
        names = ("x", "timesteps", "context", "y") if self.y_dim else ("x", "timesteps", "context")
        return names + self.control_names

    @property
    def control_names(self) -> tuple[str, ...]:
        if not self.controlnet:
            return ()
        residuals = tuple(f"control_{i}" for i in range(len(self.base_config.skips()) + 1))
        return residuals + tuple(f"adapter_{i}" for i in range(len(self.base_config.adapter_blocks())))

    def control_shapes(self, rows: int, latent_h: int, latent_w: int) -> list[tuple[int, int, int, int]]:
        return self.base_config.control_shapes(rows, latent_h, latent_w)

    control_label = "ControlNet's residuals and adapter features"  # what its control inputs are, for reasons

    # An engine's outputs by name and shape: one for a UNet; a ControlNet's engines give several
    # (trt_core/controlnet/family.py), and the backends allocate and return whatever the family names.
    output_names = ("out",)

    def output_shapes(self, rows: int, latent_h: int, latent_w: int) -> list[tuple[int, int, int, int]]:
        return [(rows, self.base_config.out_channels, latent_h, latent_w)]

    def call_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """The model with the engines' flat signature (x, timesteps, context[, y][, control...]): what
        torch.export traces for the torch backend."""
        return arch.UNetCall(module, self.y_dim is not None)

    def with_controlnet(self) -> "ModelFamily":
        """The same UNet, with inputs for ControlNet's residuals and T2I-Adapter's features."""
        if self.controlnet:
            return self
        return replace(self, name=self.name + CONTROLNET_SUFFIX, label=self.label + " + ControlNet inputs",
                       controlnet=True)

    @property
    def plain(self) -> "ModelFamily":
        """The family of the UNet's weights (without ControlNet inputs)."""
        return family_named(self.name.removesuffix(CONTROLNET_SUFFIX)) if self.controlnet else self

    @property
    def is_inpaint(self) -> bool:
        return self.in_channels == 9

    def unet_config(self) -> arch.UNetConfig:
        return replace(self.base_config, in_channels=self.in_channels)


_BASES = [
    ModelFamily("sd1", "SD 1.x", 768, None, 4, "eps", 512, arch.SD15),
    ModelFamily("sd2", "SD 2.x", 1024, None, 4, "eps", 512, arch.SD2),
    ModelFamily("sd2-v", "SD 2.x (v)", 1024, None, 4, "v", 768, arch.SD2),
    ModelFamily("sdxl", "SDXL base", 2048, 2816, 4, "eps", 1024, arch.SDXL),
    ModelFamily("sdxl-refiner", "SDXL refiner", 1280, 2560, 4, "eps", 1024, arch.SDXL_REFINER),
]
# Inpainting UNets take 9 channels (latent, mask, masked image); SD2's depth model takes 5.
FAMILIES: dict[str, ModelFamily] = {f.name: f for f in _BASES}
for _f in [f for f in _BASES if f.name != "sdxl-refiner"]:
    FAMILIES[_f.name + "-inpaint"] = replace(_f, name=_f.name + "-inpaint", label=_f.label + " inpaint", in_channels=9)
FAMILIES["sd2-depth"] = replace(FAMILIES["sd2"], name="sd2-depth", label="SD 2.x depth", in_channels=5)
# Test-size models with the real block structure: the demo's default and the tests' subjects.
TINY = ModelFamily("tiny", "tiny test UNet (SD1.x blocks)", 768, None, 4, "eps", 64, arch.TINY)
TINY_INPAINT = replace(TINY, name="tiny-inpaint", label="tiny test UNet, inpaint", in_channels=9)
TINY_XL = ModelFamily("tiny-xl", "tiny test UNet (SDXL blocks)", 2048, 2816, 4, "eps", 64, arch.TINY_XL)
FAMILIES.update({f.name: f for f in (TINY, TINY_INPAINT, TINY_XL)})


def family_named(name: str) -> ModelFamily:
    if name.endswith(CONTROLNET_SUFFIX):
        return family_named(name.removesuffix(CONTROLNET_SUFFIX)).with_controlnet()
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnsupportedModelError(f"not supported: unknown model family {name!r} "
                                    f"(known: {', '.join(sorted(FAMILIES))})") from None


def unet_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The UNet's own weights, from a full checkpoint or from a bare UNet state dict."""
    if any(k.startswith(UNET_PREFIX) for k in state_dict):
        return {k[len(UNET_PREFIX):]: v for k, v in state_dict.items() if k.startswith(UNET_PREFIX)}
    return dict(state_dict)


def config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> arch.UNetConfig:
    """Read the architecture off the weights' names and shapes (works for every ldm/sgm UNet)."""
    sd = unet_state_dict(sd)
    if "input_blocks.0.0.weight" not in sd or "out.2.weight" not in sd:
        sample = ", ".join(sorted(sd)[:3]) or "no tensors"
        raise UnsupportedModelError(f"not supported: no SD UNet weights found (keys start with {sample})")
    first = sd["input_blocks.0.0.weight"]
    model_channels, in_channels = first.shape[0], first.shape[1]
    out_channels = sd["out.2.weight"].shape[0]

    def block_ids(prefix: str) -> list[int]:
        return sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})

    def depth(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})

    # Input blocks alternate runs of ResBlocks with single Downsample blocks ("...op.weight").
    levels: list[list[int]] = [[]]
    for i in block_ids("input_blocks.")[1:]:
        if f"input_blocks.{i}.0.op.weight" in sd:
            levels.append([])
        else:
            levels[-1].append(i)
    num_res_blocks = len(levels[0])
    if num_res_blocks == 0 or any(len(level) != num_res_blocks for level in levels):
        raise UnsupportedModelError("not supported: uneven number of ResBlocks per level")
    channel_mult = tuple(sd[f"input_blocks.{level[0]}.0.out_layers.3.weight"].shape[0] // model_channels
                         for level in levels)
    transformer_depth = tuple(depth(f"input_blocks.{level[0]}.1.transformer_blocks.") for level in levels)
    middle_depth = depth("middle_block.1.transformer_blocks.")
    attn = next((k for k in sd if k.endswith("attn2.to_k.weight")), None)
    if attn is None:
        raise UnsupportedModelError("not supported: the UNet has no cross-attention (not a text-to-image SD UNet)")
    context_dim = sd[attn].shape[1]
    proj_in = next(k for k in sd if k.endswith("proj_in.weight"))
    adm = sd.get("label_emb.0.0.weight")
    return arch.UNetConfig(
        in_channels=in_channels, out_channels=out_channels, model_channels=model_channels,
        channel_mult=channel_mult, num_res_blocks=num_res_blocks, transformer_depth=transformer_depth,
        transformer_depth_middle=middle_depth, context_dim=context_dim,
        num_heads=8, num_head_channels=-1 if context_dim == 768 else 64,
        use_linear_in_transformer=sd[proj_in].dim() == 2,
        adm_in_channels=None if adm is None else adm.shape[1])


def family_of_config(config: arch.UNetConfig, prediction: str = "eps") -> ModelFamily:
    """The family whose architecture is exactly `config`; else an error naming the closest family
    and what differs from it."""
    for family in FAMILIES.values():
        if family.prediction == prediction and family.unet_config() == config:
            return family

    def differences(family: ModelFamily) -> list[str]:
        theirs = family.unet_config()
        return [f"{f.name} {getattr(config, f.name)} (it has {getattr(theirs, f.name)})"
                for f in dataclasses.fields(config) if getattr(config, f.name) != getattr(theirs, f.name)]

    known = [f for f in FAMILIES.values() if not f.name.startswith("tiny")]
    closest = min(known, key=lambda f: (len(differences(f)), f.prediction != prediction))
    found = differences(closest)
    if not found:
        raise UnsupportedModelError(f"not supported: a {closest.label} UNet with {prediction}-prediction")
    raise UnsupportedModelError(f"not supported: the closest known family is {closest.label}, and this UNet differs "
                                f"in {'; '.join(found)}")


def detect_family(state_dict: Mapping[str, torch.Tensor], prediction: str = "eps") -> ModelFamily:
    """The family of a checkpoint's state dict. v-prediction is not visible in the weights:
    the caller passes what the loader decided (the WebUI's `parameterization`)."""
    return family_of_config(config_from_state_dict(state_dict), prediction)


def detect_family_of_module(unet: torch.nn.Module, prediction: str = "eps") -> ModelFamily:
    """The family of a UNet module (ours, or the WebUI's ldm/sgm UNetModel)."""
    with torch.no_grad():
        shapes = {k: torch.empty(v.shape, device="meta") for k, v in unet.state_dict().items()}
    return detect_family(shapes, prediction)
