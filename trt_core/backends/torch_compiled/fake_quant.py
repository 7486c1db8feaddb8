"""The implementation gate of a quantized torch engine (issue 22): the engine's output against the
same recipe fake-quantized in PyTorch, computed in float32 from the quantized values: the same
layers, the same calibrated input scales (from the engine's record), the weights quantized again
from the PyTorch UNet's own float weights. The tolerance is tight, so a wrong scale, a layer whose
weights did not follow, or a cast in the wrong place is refused; how far the recipe itself drifts
from the float UNet is measured separately (quality.py's loop), and is a property of the recipe,
not of its implementation.

The reference runs eagerly; the engine is the compiled artifact. On the CPU both run for real
(torch casts to and from float8 there, and `torch._scaled_mm` takes float8 on the CPU too); only
cuBLASLt's FP8 kernels and their fast accumulation need the GPU."""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from sd_unet_trt.trt_core.backends.torch_compiled.quantized import (FORMATS, quantize_rows, replaced, requantize,
                                                                    transformer_layer_paths)
from sd_unet_trt.trt_core.backends.torch_compiled.static_fp8 import input_scale


class FakeQuantLinear(torch.nn.Module):
    """What a quantized layer of the recipe computes, in float32: the input rounded to the 8-bit
    grid of its scale (static, or per row) and back, times the weight rounded the same way."""

    def __init__(self, linear: torch.nn.Linear, recipe: dict[str, Any], amax: float | None):
        super().__init__()
        self.precision, self.static = recipe["precision"], recipe["activation_scales"] == "static"
        weight_format = ("fp8_tensor" if recipe.get("weight_scales") == "tensor" else "fp8") if self.static \
            else recipe["precision"]
        with torch.no_grad():
            values, scales = requantize(linear.weight.float(), weight_format)
            self.register_buffer("weight", values.float() * (scales if scales.dim() == 0 else scales[:, None]))
            self.register_buffer("bias", None if linear.bias is None else linear.bias.float())
            self.register_buffer("input_scale", input_scale(amax) if self.static else None)
        # what the engine must store for this layer, by the name's last part
        self.stored = {"weight": values, "weight_scale": scales,
                       **({"input_scale": self.input_scale} if self.static else {})}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.float().reshape(-1, x.shape[-1])
        if self.static:
            qmax = FORMATS["fp8"][1]
            values = (rows * self.input_scale.reciprocal()).clamp(-qmax, qmax).to(torch.float8_e4m3fn)
            rows = values.float() * self.input_scale
        else:
            values, scales = quantize_rows(rows, self.precision)
            rows = values.float() * scales[:, None]
        return F.linear(rows, self.weight, self.bias).reshape(*x.shape[:-1], -1)


def fake_quantized(unet: torch.nn.Module, recipe: dict[str, Any],
                   source_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A float32 copy of `unet` with the recipe's layers replaced by FakeQuantLinear; its weights
    first rounded through `source_dtype`, the float type the engine was built from (fp16 on a GPU)."""
    module = copy.deepcopy(unet)
    module = (module.to(source_dtype) if source_dtype is not None else module).float().eval()
    amax = recipe.get("input_amax", {})
    for path in transformer_layer_paths(module, recipe["layers"]):
        module = replaced(module, path, lambda linear, p=path: FakeQuantLinear(linear, recipe, amax.get(p)))
    return module


def stored_mismatches(reference: torch.nn.Module, stored: dict[str, torch.Tensor], prefix: str = "unet.") -> list[str]:
    """The quantized weights and scales the engine stores (`stored`, by graph name) that are not
    bit for bit what the recipe makes of the PyTorch UNet's weights and the recorded calibration.
    An input scale 2x off hardly changes any output (FP8 is a floating-point format: a power
    of two only moves exponents; only subnormal values round differently), so the stored values are compared, not only outputs."""
    mismatched = []
    for path, layer in reference.named_modules():
        if isinstance(layer, FakeQuantLinear):
            for part, expected in layer.stored.items():
                name = f"{prefix}{path}.{part}"
                if not _same_bits(stored.get(name), expected):
                    mismatched.append(name)
    return mismatched


def _same_bits(got: torch.Tensor | None, expected: torch.Tensor) -> bool:
    if got is None or got.shape != expected.shape or got.dtype != expected.dtype:
        return False
    return torch.equal(got.detach().cpu().contiguous().reshape(-1).view(torch.uint8),
                       expected.detach().cpu().contiguous().reshape(-1).view(torch.uint8))
