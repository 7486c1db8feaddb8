"""FP8 linear layers with static scales (issue 22): each layer's input scale is calibrated once, at
build time, on the UNet's own activations, and stored in the engine beside the FP8 weight and its
scale. A static scale needs no reduction at run time, so the cast to FP8,
`(x * (1/scale)).clamp(±448).to(float8_e4m3fn)`, is plain pointwise work that Inductor fuses into
the kernel producing x (LayerNorm, GEGLU, the attention output); the product is one
`torch._scaled_mm` with per-tensor scales (cuBLASLt's Hopper FP8 kernels).

The per-row recipe (quantized.py) measured slower than fp16 on an H200 because each activation's
row-wise amax is a reduction inside its producer kernel (SDXL: +5.2 ms, docs/BENCHMARKS.md).

Weights: one scale per tensor by default (`weight_scales="tensor"`), since `_scaled_mm` on sm_90
takes either two per-tensor scales or two row-wise ones, not one of each; `"channel"` keeps a scale
per output channel and broadcasts the static input scale to one per row (the row-wise kernel).

Calibration inputs are `trt_core/quantize.py`'s (what the UNet sees in the WebUI's sampler, at
timesteps over the whole schedule); the amax per layer is the largest |x| seen in any call."""
from __future__ import annotations

from typing import Iterable

import torch

from sd_unet_trt.trt_core.backends.torch_compiled.quantized import (FORMATS, LAYER_SETS, quantize_rows, quantize_tensor,
                                                                    replaced, transformer_layer_paths)

FP8_MAX = FORMATS["fp8"][1]
WEIGHT_SCALES = ("tensor", "channel")


def input_scale(amax: float) -> torch.Tensor:
    """The stored scale of an input whose calibrated peak is `amax`."""
    return torch.tensor(max(float(amax), 1e-12) / FP8_MAX, dtype=torch.float32)


def calibrate_input_amax(module: torch.nn.Module, paths: Iterable[str],
                         calls: Iterable[tuple[torch.Tensor, ...]]) -> dict[str, float]:
    """The largest |input| each linear layer at `paths` sees over `calls` (module(*call)), on the
    module's device and dtype. Hooks only; the module is not changed."""
    amax: dict[str, torch.Tensor] = {}
    handles = []

    def hook(path: str):
        def record(_module: torch.nn.Module, args: tuple) -> None:
            peak = args[0].detach().abs().amax().float()
            amax[path] = torch.maximum(amax[path], peak) if path in amax else peak
        return record

    for path in paths:
        handles.append(module.get_submodule(path).register_forward_pre_hook(hook(path)))
    parameter = next(module.parameters())
    try:
        with torch.no_grad():
            for call in calls:
                module(*(t.to(parameter.device, parameter.dtype if t.is_floating_point() and t.dim() > 1 else t.dtype)
                         for t in call))
    finally:
        for handle in handles:
            handle.remove()
    missing = [p for p in paths if p not in amax]
    if missing:
        raise ValueError(f"calibration never reached the layers {', '.join(missing[:3])}")
    return {path: float(value) for path, value in amax.items()}


class StaticFP8Linear(torch.nn.Module):
    """A linear layer computing in FP8 with a calibrated per-tensor input scale. `source` is the
    float weight it was made from (not a parameter: it would be stored beside its FP8 copy)."""

    def __init__(self, linear: torch.nn.Linear, amax: float, weight_scales: str = "tensor",
                 fast_accum: bool = True):
        super().__init__()
        if linear.in_features % 16 or linear.out_features % 16:
            raise ValueError(f"a {linear.in_features}x{linear.out_features} layer cannot be quantized "
                             "(the scaled products need multiples of 16)")
        if weight_scales not in WEIGHT_SCALES:
            raise ValueError(f"unknown weight_scales {weight_scales!r} (known: {', '.join(WEIGHT_SCALES)})")
        self.weight_scales, self.fast_accum = weight_scales, fast_accum
        # how the engine re-quantizes a new weight (a LoRA) into this layer's storage
        self.weight_format = "fp8_tensor" if weight_scales == "tensor" else "fp8"
        with torch.no_grad():
            values, scale = quantize_tensor(linear.weight) if weight_scales == "tensor" \
                else quantize_rows(linear.weight, "fp8")
        self.weight = torch.nn.Parameter(values, requires_grad=False)
        self.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
        self.input_scale = torch.nn.Parameter(input_scale(amax), requires_grad=False)
        self.bias = linear.bias
        object.__setattr__(self, "source", linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        # pointwise only (no reduction): fused by Inductor into the kernel that produced x
        values = (rows * self.input_scale.reciprocal()).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        if self.weight_scales == "tensor":
            scale_a, scale_b = self.input_scale, self.weight_scale
        else:  # the row-wise kernel: one input scale per row, all equal
            scale_a, scale_b = self.input_scale.expand(rows.shape[0], 1).contiguous(), self.weight_scale[None, :]
        out = torch._scaled_mm(values, self.weight.t(), scale_a=scale_a, scale_b=scale_b, bias=self.bias,
                               out_dtype=x.dtype, use_fast_accum=self.fast_accum)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def static_fp8_linears(module: torch.nn.Module, layers: str, amax: dict[str, float], weight_scales: str = "tensor",
                       fast_accum: bool = True) -> torch.nn.Module:
    """`module` with the layer set's linear layers replaced by StaticFP8Linear, each with its
    calibrated input peak from `amax` (by path). The caller's module is untouched."""
    if layers not in LAYER_SETS:
        raise ValueError(f"unknown quantized layer set {layers!r} (known: {', '.join(LAYER_SETS)})")
    for path in transformer_layer_paths(module, layers):
        module = replaced(module, path, lambda linear, p=path: StaticFP8Linear(linear, amax[p], weight_scales, fast_accum))
    return module
