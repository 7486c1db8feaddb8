"""The benchmarks' work: SD1.5 and SDXL (and the tiny test UNet) with random weights in the real
architectures, the inputs of one sampler call, and the FLOPs of one step."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

import checkout  # noqa: F401  (sd_unet_trt from this checkout)

from sd_unet_trt.models.families import FAMILIES, TINY, ModelFamily  # noqa: E402
from sd_unet_trt.models.unet import UNetModel  # noqa: E402


@dataclass(frozen=True)
class Workload:
    name: str
    family: ModelFamily
    px: int
    rows: int = 2  # one image with CFG
    tokens: int = 75

    @property
    def latent(self) -> int:
        return self.px // 8

    @property
    def context_len(self) -> int:
        return self.tokens // 75 * 77


WORKLOADS = {
    "sd15": Workload("SD1.5 UNet, 512x512", FAMILIES["sd1"], 512),
    "sdxl": Workload("SDXL UNet, 1024x1024", FAMILIES["sdxl"], 1024),
    "tiny": Workload("tiny UNet, 64x64", TINY, 64),
}


def randomized_on(make: Callable[[], torch.nn.Module], device: torch.device, seed: int = 0) -> torch.nn.Module:
    """The module `make` builds, with fp32 random weights drawn on the device itself (seconds, where
    a CPU init of SDXL takes a minute). Same scheme as models.unet.seeded_unet: every layer non-zero,
    so every input matters."""
    with torch.device("meta"):
        module = make()
    module = module.to_empty(device=device)
    generator = torch.Generator(device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 1 / math.sqrt(p[0].numel()), generator=generator)
            elif name.endswith("bias"):
                p.normal_(0, 0.02, generator=generator)
            else:
                p.normal_(1.0, 0.05, generator=generator)
    return module.eval().requires_grad_(False)


def make_unet(family: ModelFamily, device: torch.device, seed: int = 0) -> UNetModel:
    return randomized_on(lambda: UNetModel(family.unet_config()), device, seed)


def make_inputs(work: Workload, device: torch.device, dtype: torch.dtype, generator: torch.Generator) -> tuple:
    """One sampler call: cond and uncond rows share the timestep, as in CFG."""
    n, f = work.rows, work.family
    x = torch.randn(n, f.in_channels, work.latent, work.latent, generator=generator, device=device).to(dtype)
    t = torch.rand(1, generator=generator, device=device).mul(999).expand(n).contiguous()
    ctx = torch.randn(n, work.context_len, f.context_dim, generator=generator, device=device).to(dtype)
    if f.y_dim:
        return x, t, ctx, torch.randn(n, f.y_dim, generator=generator, device=device).to(dtype)
    return x, t, ctx


def flop_count(work: Workload) -> int:
    """FLOPs of one step, counted on the meta device (convolutions, GEMMs, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    gen = torch.Generator("cpu").manual_seed(0)
    inputs = make_inputs(work, torch.device("cpu"), torch.float16, gen)
    with torch.device("meta"):
        unet = UNetModel(work.family.unet_config()).half()
    meta_inputs = tuple(t.to("meta") for t in inputs)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(*meta_inputs)
    return counter.get_total_flops()


