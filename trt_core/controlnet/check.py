"""A ControlNet engine (or its ONNX in ONNX Runtime) against the PyTorch ControlNet: the UNet's check
(trt_core/verify.py: profile points, tolerance per precision, norm-wise error) on all residuals."""
from __future__ import annotations

from typing import Callable

import torch

from sd_unet_trt.trt_core.controlnet.export import sample_call
from sd_unet_trt.trt_core.controlnet.family import ControlNetFamily
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.verify import TOLERANCE, Accuracy, VerificationError, inputs_generator, profile_points

# a runner in the engines' signature: (x, timesteps, context, y, control=[hint]) -> residuals
Runner = Callable[..., list[torch.Tensor]]


def as_runner(model: torch.nn.Module) -> Runner:
    """The PyTorch ControlNet called the way its engines are (the hint as the control input)."""
    def run(x, timesteps, context, y=None, control=None):
        return model(x, control[0], timesteps, context, y)
    return run


def compare(runner: Runner, reference: Runner, family: ControlNetFamily, profile: Profile, precision: str,
            device: torch.device | str = "cpu", ref_dtype: torch.dtype = torch.float32,
            seed: int | None = None) -> Accuracy:
    """Both on the same fresh random inputs at each profile point; the error is over every residual
    together, so a wrong small one counts as much as its size; NaN never passes."""
    generator = inputs_generator(seed)
    worst_abs, worst_rel, shapes = 0.0, 0.0, []
    for rows, lh, lw, ctx in profile_points(profile):
        x, hint, timesteps, context, *y = sample_call(family, rows, lh, lw, ctx, torch.float32, device, generator)
        y = y[0].to(ref_dtype) if y else None
        args = (x.to(ref_dtype), timesteps, context.to(ref_dtype), y)
        with torch.no_grad():
            ref = reference(*args, control=[hint.to(ref_dtype)])
            out = runner(*args, control=[hint.to(ref_dtype)])
        if [tuple(o.shape) for o in out] != [tuple(r.shape) for r in ref]:
            raise VerificationError(f"output shapes {[tuple(o.shape) for o in out]} != reference "
                                    f"{[tuple(r.shape) for r in ref]}")
        ref_flat = torch.cat([r.detach().double().cpu().reshape(-1) for r in ref])
        diff = torch.cat([o.detach().double().cpu().reshape(-1) for o in out]) - ref_flat
        rel = float(diff.norm() / ref_flat.norm().clamp_min(1e-30))
        abs_err = float(diff.abs().max())
        if not (rel == rel and abs_err == abs_err):  # NaN
            rel = abs_err = float("inf")
        worst_abs, worst_rel = max(worst_abs, abs_err), max(worst_rel, rel)
        shapes.append(f"{rows}x{lh * 8}x{lw * 8}px/{ctx}")
    return Accuracy(worst_abs, worst_rel, TOLERANCE[precision], tuple(shapes))

