"""Numerical checks: a runnable (ONNX in ONNX Runtime, or any engine) against the PyTorch UNet
on fresh random inputs at a profile's min, opt and max shapes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sd_unet_trt.errors import UserError
from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.export import sample_inputs, unpack_inputs
from sd_unet_trt.trt_core.precision import PRECISIONS
from sd_unet_trt.trt_core.profiles import Profile

# Norm-wise relative error ||out - ref|| / ||ref|| allowed per precision (METHOD.md's bands).
TOLERANCE = {name: p.tolerance for name, p in PRECISIONS.items()}

Runner = Callable[..., torch.Tensor]


class VerificationError(UserError, RuntimeError):
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


def inputs_generator(seed: int | None) -> torch.Generator:
    """The generator of a check's random inputs: seeded, or fresh for every check."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return generator


def compare(runner: Runner, reference: Runner, family: ModelFamily, profile: Profile, precision: str,
            device: torch.device | str = "cpu", ref_dtype: torch.dtype = torch.float32, seed: int | None = None,
            input_dtype: torch.dtype | None = None) -> Accuracy:
    """Run both on the same fresh random inputs at each profile point; NaN never passes."""
    generator = inputs_generator(seed)
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


def require(accuracy: Accuracy, what: str, reference: str = "the PyTorch UNet") -> Accuracy:
    if not accuracy.passed:
        raise VerificationError(
            f"{what} differs from {reference} by {accuracy.max_rel:.2e} (relative), over the "
            f"{accuracy.tolerance:.0e} allowed, at shapes {', '.join(accuracy.shapes)}; it was not registered")
    return accuracy


# The implementation gate of a quantized engine (the torch backend's fake_quant.py makes its
# reference). First, exactly: the quantized weights and scales the engine stores are the recipe's,
# bit for bit. Then its output: worst ||engine - fake-quantized|| / ||fake-quantized||, by the
# engine's float type. That figure cannot be tight: a value next to a rounding boundary of the
# 8-bit grid lands on either side with any change of arithmetic order, moves by a whole FP8 step,
# and the next quantized layers amplify it (tiny UNet on this CPU, fp32, same recipe: eager vs
# fake-quantized 2.6%, the compiled engine vs fake-quantized 4-5%). float16 (GPU) is provisional:
# the bench records it beside the figure for a planted 2x scale error.
IMPLEMENTATION_TOLERANCE = {torch.float32: 0.10, torch.float16: 0.10, torch.bfloat16: 0.15}
GATE_SEEDS = (101, 102, 103)


def implementation_error(engine: Callable[..., torch.Tensor], reference: torch.nn.Module, family: ModelFamily,
                         profile: Profile, device: torch.device | str) -> float:
    """Worst relative error of the engine against `reference` (its quantized recipe fake-quantized
    in PyTorch) over a few fixed calls at the profile's points; NaN comes back as inf."""
    worst = 0.0
    for seed in GATE_SEEDS:
        worst = max(worst, compare(engine, reference, family, profile, "fp8", device=device, seed=seed).max_rel)
    return worst


def require_implementation(error: float, dtype: torch.dtype, what: str,
                           mismatched: list[str] = ()) -> dict[str, float]:
    """The figures the manifest keeps, or VerificationError when the engine is not its recipe:
    `mismatched` names stored quantized weights or scales that are not the recipe's bit for bit."""
    if mismatched:
        raise VerificationError(
            f"{what} does not hold its quantized recipe: {len(mismatched)} stored weights or scales differ from what "
            f"the recipe makes of the PyTorch UNet ({', '.join(mismatched[:3])}); it was not registered")
    tolerance = IMPLEMENTATION_TOLERANCE[dtype]
    if not error <= tolerance:  # NaN fails too
        raise VerificationError(
            f"{what} does not compute its quantized recipe: it differs from the recipe fake-quantized in PyTorch "
            f"by {error:.2%}, over the {tolerance:.0%} allowed (a wrong scale, or weights that did not follow); "
            "it was not registered")
    return {"implementation_rel_error": error, "implementation_tolerance": tolerance}
