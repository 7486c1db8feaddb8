"""A small k-diffusion-style sampler (Euler, classifier-free guidance) for the demo and benchmarks:
the same UNet call pattern the WebUI makes, cond rows first, then uncond rows, in one call."""
from __future__ import annotations

from typing import Callable

import torch

UNetFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sd_sigmas_table(steps_trained: int = 1000) -> torch.Tensor:
    """sigma for each trained timestep of the SD1.x/2.x/XL noise schedule (scaled linear betas)."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, steps_trained, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt()


def sigma_to_t(sigma: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The continuous timestep of a sigma, interpolated in log-sigma (as k-diffusion does)."""
    log_sigmas = table.log()
    log_sigma = sigma.double().log().clamp(log_sigmas[0], log_sigmas[-1])
    high = torch.searchsorted(log_sigmas, log_sigma.reshape(-1)).clamp(1, len(table) - 1)
    low = high - 1
    w = (log_sigma.reshape(-1) - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
    return (low + w).reshape(sigma.shape).float()


def karras_sigmas(n: int, table: torch.Tensor, rho: float = 7.0) -> torch.Tensor:
    lo, hi = float(table[0]) ** (1 / rho), float(table[-1]) ** (1 / rho)
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def sample_euler_cfg(unet: UNetFn, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                     steps: int, guidance: float = 7.0,
                     on_step: Callable[[int], None] | None = None) -> torch.Tensor:
    """Denoise `noise` (B latents) with one UNet call of 2B rows per step; returns the latents."""
    table = sd_sigmas_table()
    sigmas = karras_sigmas(steps, table)
    x = noise.double() * sigmas[0]
    batch = noise.shape[0]
    context = torch.cat([cond, uncond]).to(noise.dtype)
    for i in range(steps):
        sigma = sigmas[i]
        c_in = 1.0 / (sigma ** 2 + 1) ** 0.5
        x_in = (torch.cat([x, x]) * c_in).to(noise.dtype)
        t = sigma_to_t(sigma.expand(2 * batch), table).to(noise.device)
        eps_cond, eps_uncond = unet(x_in, t, context).double().chunk(2)
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        x = x + eps * (sigmas[i + 1] - sigma)  # Euler step on dx/dsigma = eps
        if on_step:
            on_step(i)
    return x.to(noise.dtype)
