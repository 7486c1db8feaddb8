"""A stand-in for sd-webui-controlnet (v1.1.455), written from how its scripts/hook.py drives the
UNet (docs/WEBUI.md), not from its code: `UnetHook.hook` puts a forward on the UNet instance
(`model._original_forward` keeps the one it replaced) that runs the control models, sums their
residuals per unit with the unit's weight (units outside their start/end add nothing: a float 0.0
stays in the list, and adding it returns the tensor itself), then runs the UNet's own blocks as
`block(h, emb, context)`, adds the last residual after the middle block and the others to the skip
connections as the output blocks concatenate them (popping from the end), and ends with `self.out`.
T2I-Adapter units (`Unit.adapter`) add their features to the hidden state after input blocks
2, 5, 8 and 11 (SDXL: 3, 5 and 8, the fourth after the middle block), before the skip is kept.
`restore` puts the saved forward back. The real extension in the real WebUI is checked by
tests/real_webui/check_controlnet_in_webui.py.

By default the forward calls each unit's model itself (as a ControlNet version without
`control_params` would). With `params`, it drives the units as v1.1.455 does: the hook holds them
as `control_params` (each with `control_model`, `control_model_type`, `guidance_stopped`, which the
schedule handler sets), the forward ControlNet binds (`forward_webui`) closes over the hook as
`outer`, and each active unit's model is called as `param.control_model(x=, hint=, timesteps=,
context=, y=)`.

Variants the bridge must refuse: `reference` patches a transformer block's `_forward` on the
instance (as reference-only does), `encoder` adds to `h` after an input block where no adapter
feature goes.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modules import script_callbacks, scripts, shared


def timestep_embedding(timesteps, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half)
    args = timesteps[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def add(base, x):
    if isinstance(x, float):
        return base if x == 0.0 else base + x
    return base + x


def injection(is_sdxl: bool) -> list[int]:
    return [3, 5, 8] if is_sdxl else [2, 5, 8, 11]


class TinyControlModel(torch.nn.Module):
    """Residuals of the UNet's skip shapes from a hint image, the latent and the timestep, with
    seeded random weights; with `adapter`, a T2I-Adapter's features instead (of the shapes of the
    blocks they are added after, and for SDXL of the middle block's output), from the hint only."""

    def __init__(self, config, seed: int, adapter: bool = False):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        skips = config.skips()
        if adapter:
            is_sdxl = bool(config.adm_in_channels)
            shapes = [skips[i] for i in injection(is_sdxl) if i < len(skips)] + ([skips[-1]] if is_sdxl else [])
        else:
            shapes = skips + [skips[-1]]
        self.adapter = adapter
        self.downsamplings = [d for _, d in shapes]
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(3 + 4, ch, 1) for ch, _ in shapes)
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.5)
                conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)

    def forward(self, x, hint, timesteps, context=None, y=None):  # context, y: ControlNet passes them; unused here
        rows = x.shape[0]
        hint = F.interpolate(hint.to(x), size=x.shape[-2:], mode="bilinear").expand(rows, -1, -1, -1)
        if self.adapter:  # an adapter sees the hint only: the same features at every step
            feature = torch.cat([hint, torch.ones_like(x)], dim=1)
        else:
            feature = torch.cat([hint, x], dim=1) * torch.cos(timesteps.float() / 1000)[:, None, None, None].to(x)
        out = []
        for conv, d in zip(self.convs, self.downsamplings):
            f = feature
            for _ in range(d):
                f = F.avg_pool2d(f, 2, ceil_mode=True)
            out.append(conv(f))
        return out


@dataclass
class Unit:
    model: TinyControlModel
    hint: torch.Tensor
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    stopped: bool = False


class ControlModelType(enum.Enum):  # the two kinds whose model calls add to the UNet (scripts/enums.py)
    ControlNet = "ControlNet, Lvmin Zhang"
    T2I_Adapter = "T2I_Adapter, Chong Mou"


@dataclass
class ControlParams:
    """A unit as v1.1.455's hook holds it (the fields the forward reads)."""
    control_model: TinyControlModel
    control_model_type: ControlModelType
    hint_cond: torch.Tensor
    weight: float
    guidance_stopped: bool = False


class UnetHook:
    def __init__(self):
        self.model = None
        self.units: list[Unit] = []
        self.control_params: list[ControlParams] | None = None  # with `params` only

    def guidance_schedule_handler(self, params) -> None:
        fraction = params.sampling_step / params.total_sampling_steps
        for unit in self.units:
            unit.stopped = fraction < unit.start or fraction > unit.end
        for unit, param in zip(self.units, self.control_params or ()):
            param.guidance_stopped = unit.stopped

    def controls(self, x, timesteps, context, y) -> list[tuple[bool, float, list[torch.Tensor]]]:
        """(an adapter's, the unit's weight, its model's outputs) for each unit active at this step."""
        if self.control_params is None:
            return [(u.model.adapter, u.weight, u.model(x, u.hint, timesteps)) for u in self.units if not u.stopped]
        return [(p.control_model_type == ControlModelType.T2I_Adapter, p.weight,
                 p.control_model(x=x, hint=p.hint_cond, timesteps=timesteps, context=context, y=y))
                for p in self.control_params if not p.guidance_stopped]

    def hook(self, model, units: list[Unit], variant: str = "", params: bool = False) -> None:
        self.model, self.units = model, units
        if params:
            self.control_params = [ControlParams(u.model, ControlModelType.T2I_Adapter if u.model.adapter
                                                 else ControlModelType.ControlNet, u.hint, u.weight) for u in units]
        outer = self

        def forward(self, x, timesteps=None, context=None, y=None, **kwargs):
            is_sdxl = y is not None
            total = [0.0] * (len(self.input_blocks) + 1)
            total_t2i = [0.0] * 4
            for adapter, weight, outputs in outer.controls(x, timesteps, context, y):
                target = total_t2i if adapter else total
                for i, c in enumerate(outputs):
                    target[i] = c * weight + target[i]
            emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(x.dtype))
            if y is not None:
                emb = emb + self.label_emb(y)
            hs, h = [], x
            for i, module in enumerate(self.input_blocks):
                h = module(h, emb, context)
                if i in injection(is_sdxl):
                    h = add(h, total_t2i.pop(0))
                if variant == "encoder" and i == 1:
                    h = add(h, 0.1)
                hs.append(h)
            h = self.middle_block(h, emb, context)
            h = add(h, total.pop())
            if is_sdxl and total_t2i:
                h = add(h, total_t2i.pop(0))
            for module in self.output_blocks:
                h = torch.cat([h, add(hs.pop(), total.pop())], dim=1)
                h = module(h, emb, context)
            return self.out(h.type(x.dtype))

        def forward_webui(*args, **kwargs):
            try:
                return forward(*args, **kwargs)
            except Exception:  # as ControlNet's: the models to the CPU when the forward raises
                for unit in outer.units:
                    unit.model.to("cpu")
                raise

        model._original_forward = model.forward
        model.forward = forward_webui.__get__(model, type(model))
        if variant == "reference":
            block = model.input_blocks[1]

            def hacked(self, h, emb, context=None, out_size=None):
                return type(self).forward(self, h, emb, context) * 1.01
            block._original_forward_cn_hijack = block.forward
            block.forward = hacked.__get__(block, type(block))
        script_callbacks.on_cfg_denoiser(self.guidance_schedule_handler)

    def restore(self) -> None:
        script_callbacks.remove_callbacks_for_function(self.guidance_schedule_handler)
        if self.model is not None and hasattr(self.model, "_original_forward"):
            self.model.forward = self.model._original_forward
            del self.model._original_forward
            block = self.model.input_blocks[1]
            if hasattr(block, "_original_forward_cn_hijack"):
                block.forward = block._original_forward_cn_hijack  # put back as ControlNet does: bound
        self.units, self.control_params = [], None


class ControlNetScript(scripts.Script):
    """Always visible: hooks the UNet in process() (before the WebUI applies the UNet option, as
    the real one does), follows the sampler's steps, restores in postprocess(); with `params`,
    drives the units through `control_params` as v1.1.455 does."""

    def __init__(self, units: list[Unit], variant: str = "", params: bool = False):
        self.units, self.variant, self.params, self.latest_network = units, variant, params, None
        self.filename = "sd-webui-controlnet/scripts/controlnet.py"

    def title(self):
        return "ControlNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        self.latest_network = UnetHook()
        self.latest_network.hook(shared.sd_model.model.diffusion_model, self.units, self.variant, self.params)

    def postprocess(self, p, processed, *args):
        if self.latest_network is not None:
            self.latest_network.restore()
        self.latest_network = None
