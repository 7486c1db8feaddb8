"""INT8 and FP8 linear layers for the torch backend, with no calibration: weights are quantized per
output channel when the engine is built (and again when new weights arrive, so a LoRA needs no new
scales), activations per row (token) on every call; one scaled matrix product on the tensor cores
(torch._int_mm, torch._scaled_mm), compiled by Inductor with the activation's quantization fused
into the kernels around it.

Only the transformer blocks' linear layers are quantized (attention projections and feed-forward):
they carry the GEMM work; convolutions, norms, the time embedding and the attention itself stay in
the engine's float precision. `LAYER_SETS` names the recipes the bench compares."""
from __future__ import annotations

import copy
from typing import Callable

import torch

from sd_unet_trt.models.unet import BasicTransformerBlock

FORMATS = {"int8": (torch.int8, 127.0), "fp8": (torch.float8_e4m3fn, 448.0)}

# Which linear layers of each transformer block are quantized, by their path in the block.
LAYER_SETS: dict[str, tuple[str, ...]] = {
    "transformer": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"),
    # the text projections (attn2's k/v) see 77 tokens: little work, and they set every attention's keys
    "no_text_kv": ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                   "attn2.to_q", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"),
    "feed_forward": ("ff.net.0.proj", "ff.net.2"),
    # attention's q/k/v kept in the float type: they set which tokens attend to which
    "no_qkv": ("attn1.to_out.0", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2"),
}
DEFAULT_LAYERS = "transformer"


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The float type around the quantized products: fp16 on a GPU, fp32 on a CPU (slow fp16 there)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def quantize_rows(t: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization with one scale per row: (values, float32 scales of shape [rows])."""
    qdtype, qmax = FORMATS[precision]
    t = t.float()
    scale = t.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / qmax
    scaled = (t / scale).clamp(-qmax, qmax)
    if qdtype == torch.int8:
        scaled = scaled.round()
    return scaled.to(qdtype), scale.squeeze(-1)


def quantize_tensor(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 E4M3 with one scale for the whole tensor: (values, 0-dim float32 scale)."""
    qdtype, qmax = FORMATS["fp8"]
    t = t.float()
    scale = t.abs().amax().clamp_min(1e-12) / qmax
    return (t / scale).clamp(-qmax, qmax).to(qdtype), scale


class QuantizedLinear(torch.nn.Module):
    """A linear layer computing in INT8 or FP8: x quantized per row, the weight per output channel,
    the product rescaled to x's dtype. `source` is the float weight it was made from (kept for the
    build's record of which UNet weight it holds; not a parameter)."""

    def __init__(self, linear: torch.nn.Linear, precision: str):
        super().__init__()
        if linear.in_features % 16 or linear.out_features % 16:
            raise ValueError(f"a {linear.in_features}x{linear.out_features} layer cannot be quantized "
                             "(the scaled products need multiples of 16)")
        self.precision = precision
        self.weight_format = precision  # how the engine re-quantizes a new weight (per row)
        with torch.no_grad():
            values, scale = quantize_rows(linear.weight, precision)
        self.weight = torch.nn.Parameter(values, requires_grad=False)
        self.weight_scale = torch.nn.Parameter(scale, requires_grad=False)
        self.bias = linear.bias
        # not registered: as a parameter it would be exported, stored and held on the GPU beside its
        # quantized copy (seen on the H200: SDXL's INT8 engine file 7.1 GB instead of about 3.6)
        object.__setattr__(self, "source", linear.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        values, scale = quantize_rows(rows, self.precision)
        if self.precision == "int8":
            out = (torch._int_mm(values, self.weight.t()).float() * scale[:, None] * self.weight_scale).to(x.dtype)
            if self.bias is not None:
                out = out + self.bias
        else:
            out = torch._scaled_mm(values, self.weight.t(), scale_a=scale[:, None], scale_b=self.weight_scale[None, :],
                                   bias=self.bias, out_dtype=x.dtype)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def replaced(module: torch.nn.Module, path: str, make: Callable[[torch.nn.Module], torch.nn.Module]) -> torch.nn.Module:
    """A shallow copy of `module` with the submodule at dotted `path` replaced by make(it); the
    containers on the way are copied too, everything else is shared."""
    head, _, rest = path.partition(".")
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    child = module._modules[head]
    clone._modules[head] = replaced(child, rest, make) if rest else make(child)
    return clone


def quantized_linears(module: torch.nn.Module, precision: str, layers: str = DEFAULT_LAYERS) -> torch.nn.Module:
    """`module` with the chosen linear layers of every transformer block replaced by QuantizedLinear.
    The caller's module is untouched (containers copied, other layers shared)."""
    if precision not in FORMATS:
        raise ValueError(f"unknown quantized precision {precision!r} (known: {', '.join(FORMATS)})")
    for path in transformer_layer_paths(module, layers):
        module = replaced(module, path, lambda linear: QuantizedLinear(linear, precision))
    return module


def transformer_layer_paths(module: torch.nn.Module, layers: str) -> list[str]:
    """The dotted paths of the layer set's linear layers in every transformer block of `module`."""
    if layers not in LAYER_SETS:
        raise ValueError(f"unknown quantized layer set {layers!r} (known: {', '.join(LAYER_SETS)})")
    blocks = [path for path, child in module.named_modules() if isinstance(child, BasicTransformerBlock)]
    return [f"{block}.{layer}" for block in blocks for layer in LAYER_SETS[layers]]


def requantize(value: torch.Tensor, weight_format: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A new float weight in a quantized layer's storage format: (values, scales); "fp8_tensor"
    is the static recipe's one scale per tensor (static_fp8.py), the others one per row."""
    if weight_format == "fp8_tensor":
        return quantize_tensor(value)
    return quantize_rows(value, weight_format)


def quantized_weights(module: torch.nn.Module) -> dict[str, dict[str, str]]:
    """For each quantized weight of `module` (by its name there): its format and its scale's name."""
    return {f"{path}.weight": {"format": child.weight_format, "scale": f"{path}.weight_scale"}
            for path, child in module.named_modules(remove_duplicate=False) if hasattr(child, "weight_format")}

