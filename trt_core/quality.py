"""How far a UNet's images drift from a reference UNet's over a whole denoising loop, not one step:
quantization errors compound (or wash out) across steps, and the final latent is what is decoded.

The loop is the WebUI's default kind: Euler over the model's discrete schedule (SD's scaled-linear
betas), the input scaled by c_in = 1/sqrt(sigma^2 + 1) as the WebUI's CompVis denoiser does, with
classifier-free guidance (an unconditional and a conditional row per image)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.precision import PRECISIONS

UNetFn = Callable[..., torch.Tensor]  # (x, timesteps, context[, y]) -> eps or v, as the family predicts

# The worst final-latent relative error over the loop an engine of each precision may have against
# the PyTorch UNet it is built from.
LOOP_TOLERANCE = {name: p.loop_tolerance for name, p in PRECISIONS.items() if p.loop_tolerance is not None}
PSNR_CAP_DB = 99.0


def discrete_sigmas(train_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """sigma per training timestep for SD's scaled-linear schedule (float64, ascending)."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, train_steps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def euler_schedule(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`steps` sigmas from the largest down, a final 0, and the timestep of each (k-diffusion's
    `get_sigmas` for a discrete model, without interpolation between timesteps)."""
    all_sigmas = discrete_sigmas()
    timesteps = torch.linspace(len(all_sigmas) - 1, 0, steps, dtype=torch.float64).round().long()
    return torch.cat([all_sigmas[timesteps], torch.zeros(1, dtype=torch.float64)]), timesteps


def denoise(unet: UNetFn, family: ModelFamily, latent_hw: tuple[int, int], context: torch.Tensor,
            uncond: torch.Tensor, y: torch.Tensor | None = None, steps: int = 20, cfg_scale: float = 7.0,
            seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The final latent (float32) of one image: `context`/`uncond` are (1, tokens, dim)."""
    device = context.device
    sigmas, timesteps = euler_schedule(steps)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, *latent_hw, generator=generator, dtype=torch.float64).to(device) * sigmas[0]
    conds = torch.cat([uncond, context]).to(dtype)
    ys = None if y is None else torch.cat([y, y]).to(dtype)
    for i in range(steps):
        sigma = sigmas[i].item()
        c_in = 1.0 / (sigma ** 2 + 1) ** 0.5
        x_in = torch.cat([x, x]).mul(c_in).to(dtype)
        if family.in_channels != 4:  # inpainting/depth: the extra channels are held at zero
            x_in = torch.cat([x_in, x_in.new_zeros(2, family.in_channels - 4, *latent_hw)], dim=1)
        t = torch.full((2,), float(timesteps[i]), device=device)
        args = (x_in, t, conds) if ys is None else (x_in, t, conds, ys)
        with torch.no_grad():
            out = unet(*args).double()
        x2 = torch.cat([x, x])
        if family.prediction == "v":  # k-diffusion's VDenoiser, sigma_data = 1
            denoised = x2 / (sigma ** 2 + 1) - out * sigma * c_in
        else:
            denoised = x2 - out * sigma
        uncond_d, cond_d = denoised.chunk(2)
        guided = uncond_d + cfg_scale * (cond_d - uncond_d)
        x = x + (x - guided) / sigma * (sigmas[i + 1].item() - sigma)  # Euler on dx/dsigma
    return x.float()


@dataclass(frozen=True)
class LoopQuality:
    """The candidate's final latents against the reference's, over several seeds and prompts, and
    (when a decoder is given) the decoded images' PSNR."""
    latent_rel_error: float  # worst ||x_c - x_r|| / ||x_r|| over the cases
    mean_rel_error: float
    cases: int
    steps: int
    image_psnr_db: float | None = None  # worst (lowest) over the cases; PSNR_CAP_DB for identical images

    def as_dict(self) -> dict:
        return {"latent_rel_error": self.latent_rel_error, "mean_rel_error": self.mean_rel_error,
                "cases": self.cases, "steps": self.steps}


def require_loop(quality: LoopQuality, precision: str, what: str) -> dict[str, float]:
    """The figures the manifest keeps (with the "loop_" prefix), or VerificationError when the worst
    case is over the precision's tolerance."""
    from sd_unet_trt.trt_core.verify import VerificationError  # verify imports the export, heavy

    tolerance = LOOP_TOLERANCE[precision]
    if not quality.latent_rel_error <= tolerance:  # NaN fails too
        raise VerificationError(
            f"{what}'s images drift from the PyTorch UNet's by {quality.latent_rel_error:.1%} (final latent of a "
            f"{quality.steps}-step loop, worst of {quality.cases} cases), over the {tolerance:.0%} allowed for "
            f"{precision}; it was not registered")
    figures = {"loop_rel_error": quality.latent_rel_error, "loop_mean_rel_error": quality.mean_rel_error,
               "loop_tolerance": tolerance, "loop_cases": quality.cases, "loop_steps": quality.steps}
    if quality.image_psnr_db is not None:
        figures["loop_image_psnr_db"] = quality.image_psnr_db
    return figures


def psnr_db(image: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR of two images in [0, 1], capped so identical images give a finite number (JSON has no inf)."""
    mse = torch.mean((image.double() - reference.double()) ** 2).item()
    return PSNR_CAP_DB if mse <= 10 ** (-PSNR_CAP_DB / 10) else 10 * math.log10(1 / mse)


def conditionings(family: ModelFamily, prompts: int, device: str | torch.device = "cpu") -> list[tuple]:
    """(context, uncond, y) per prompt: random embeddings of CLIP's statistics (unit variance after
    its final layer norm), 77 tokens; y (SDXL's pooled vector and sizes) likewise, else None."""
    out = []
    for p in range(prompts):
        generator = torch.Generator().manual_seed(1000 + p)
        context = torch.randn(1, 77, family.context_dim, generator=generator).to(device)
        uncond = torch.randn(1, 77, family.context_dim, generator=generator).to(device)
        y = torch.randn(1, family.y_dim, generator=generator).to(device) if family.y_dim else None
        out.append((context, uncond, y))
    return out


def loop_quality(candidate: UNetFn, reference: UNetFn, family: ModelFamily, latent_hw: tuple[int, int],
                 seeds: int = 2, prompts: int = 2, steps: int = 20, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32,
                 decoder: Callable[[torch.Tensor], torch.Tensor] | None = None) -> LoopQuality:
    """Both UNets from the same noise and conditionings; `decoder` (final latent -> image in [0, 1],
    e.g. models.vae.decode) adds the decoded images' PSNR."""
    errors, psnrs = [], []
    for context, uncond, y in conditionings(family, prompts, device):
        for seed in range(seeds):
            ref = denoise(reference, family, latent_hw, context, uncond, y, steps, seed=seed, dtype=dtype)
            got = denoise(candidate, family, latent_hw, context, uncond, y, steps, seed=seed, dtype=dtype)
            errors.append(((got - ref).norm() / ref.norm().clamp_min(1e-12)).item())
            if decoder is not None:
                psnrs.append(psnr_db(decoder(got), decoder(ref)))
    return LoopQuality(max(errors), sum(errors) / len(errors), len(errors), steps, min(psnrs) if psnrs else None)
