"""Numerical checks: a runnable (ONNX in ONNX Runtime, or any engine) against the PyTorch UNet
on fresh random inputs at a profile's min, opt and max shapes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.export import sample_inputs, unpack_inputs
from sd_unet_trt.trt_core.profiles import Profile

# Norm-wise relative error ||out - ref|| / ||ref|| allowed per precision (METHOD.md's bands).
TOLERANCE = {"fp32": 1e-3, "fp16": 1e-2, "bf16": 3e-2,
             # one call of a quantized engine: a sanity bound; its gate is the denoising loop (quality.py)
             "int8": 0.15, "fp8": 0.3}

Runner = Callable[..., torch.Tensor]


class VerificationError(RuntimeError):
    pass


@dataclass(frozen=True)
class Accuracy:
    max_abs: float
    max_rel: float  # norm-wise: ||out - ref|| / ||ref||, worst over the shapes checked
    tolerance: float
    shapes: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return self.max_rel <= self.tolerance

    def as_dict(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "max_rel": self.max_rel, "tolerance": self.tolerance}


def profile_points(profile: Profile) -> list[tuple[int, int, int, int]]:
    """(rows, latent h, latent w, context length) at the profile's min, opt and max."""
    r, c = profile.rows, profile.context_len
    h, w = profile.latent(profile.height), profile.latent(profile.width)
    points = [(r.min, h.min, w.min, c.min), (r.opt, h.opt, w.opt, c.opt), (r.max, h.max, w.max, c.max)]
    return list(dict.fromkeys(points))


def _call(unet: Runner, family: ModelFamily, inputs: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
    """Run one call with its tensors cast to `dtype` (timesteps stay float32); ControlNet residuals
    go in as `control` only where the family has them, so plain runners keep their signature."""
    x, timesteps, context, y, control = unpack_inputs(family, inputs)
    args = (x.to(dtype), timesteps, context.to(dtype)) + (() if y is None else (y.to(dtype),))
    if control is None:
        return unet(*args)
    return unet(*args, control=[c.to(dtype) for c in control])


def compare(runner: Runner, reference: Runner, family: ModelFamily, profile: Profile, precision: str,
            device: torch.device | str = "cpu", ref_dtype: torch.dtype = torch.float32, seed: int | None = None,
            input_dtype: torch.dtype | None = None) -> Accuracy:
    """Run both on the same fresh random inputs at each profile point; NaN never passes."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    worst_abs, worst_rel, shapes = 0.0, 0.0, []
    for rows, lh, lw, ctx in profile_points(profile):
        inputs = sample_inputs(family, rows, lh, lw, ctx, torch.float32, device, generator)
        with torch.no_grad():
            ref = _call(reference, family, inputs, ref_dtype).double()
            out = _call(runner, family, inputs, input_dtype or ref_dtype).double()
        if out.shape != ref.shape:
            raise VerificationError(f"output shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
        diff = (out.cpu() - ref.cpu())
        rel = float(diff.norm() / ref.cpu().norm().clamp_min(1e-30))
        abs_err = float(diff.abs().max())
        if not (rel == rel and abs_err == abs_err):  # NaN
            rel = abs_err = float("inf")
        worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel)
        shapes.append(f"{rows}x{lh * 8}x{lw * 8}px/{ctx}")
    return Accuracy(worst_abs, worst_rel, TOLERANCE[precision], tuple(shapes))


def require(accuracy: Accuracy, what: str) -> Accuracy:
    if not accuracy.passed:
        raise VerificationError(
            f"{what} differs from the PyTorch UNet by {accuracy.max_rel:.2e} (relative), over the "
            f"{accuracy.tolerance:.0e} allowed, at shapes {', '.join(accuracy.shapes)}; it was not registered")
    return accuracy
