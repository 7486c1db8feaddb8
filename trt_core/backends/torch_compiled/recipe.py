"""Which quantized recipe a torch backend build makes, from its options, and the record of it the
engine keeps (the implementation gate, fake_quant.py, rebuilds the same recipe from that record).

Options: `quantize_layers` (quantized.LAYER_SETS), `activation_scales` ("row": per-row scales
computed on every call, quantized.py; "static": per-tensor scales calibrated at build, FP8 only,
static_fp8.py), `weight_scales` ("tensor" or "channel", static FP8 only), `fast_accum`
(cuBLASLt's fast FP8 accumulation, static FP8 only)."""
from __future__ import annotations

from typing import Any

import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.backends.torch_compiled.quantized import (DEFAULT_LAYERS, quantized_linears,
                                                                    transformer_layer_paths)
from sd_unet_trt.trt_core.backends.torch_compiled.static_fp8 import (WEIGHT_SCALES, calibrate_input_amax,
                                                                     static_fp8_linears)
from sd_unet_trt.trt_core.quantize import calibration_inputs

# torch._int_mm runs CUTLASS's sm_80 INT8 kernels, native on Turing, Ampere and Ada; on Hopper and
# newer they are slower than fp16 (H200: SDXL 38.4 vs 31.3 ms/step, SD1.5 7.7 vs 6.2;
# docs/BENCHMARKS.md), so INT8 is offered below this compute capability only. bench/gemm_shapes.py
# times _int_mm against fp16 at the UNets' own GEMM shapes to check this per GPU.
INT8_SLOWER_FROM = (9, 0)
RECIPE_OPTIONS = ("quantize_layers", "activation_scales", "weight_scales", "fast_accum")
ACTIVATION_SCALES = ("row", "static")
CALIBRATION_CALLS = 8  # timesteps 999 .. 0, as trt_core/quantize.py calibrates for TensorRT


def int8_problem(capability: tuple[int, int] | None) -> str | None:
    """Why the torch backend does not offer INT8 on a GPU of this compute capability, or None."""
    if capability is None or capability < INT8_SLOWER_FROM:
        return None
    return (f"int8 on the torch backend is slower than fp16 on this GPU (compute capability {capability[0]}.{capability[1]}: "
            "torch's INT8 products run Ampere kernels on Hopper and newer); use fp8, or fp16")


def recipe_of(precision: str, options: dict[str, Any]) -> dict[str, Any]:
    """The recipe the options ask for (without its calibrated scales), or ValueError in one line."""
    activation = options.get("activation_scales", "row")
    if activation not in ACTIVATION_SCALES:
        raise ValueError(f"unknown activation_scales {activation!r} (known: {', '.join(ACTIVATION_SCALES)})")
    recipe: dict[str, Any] = {"precision": precision, "layers": options.get("quantize_layers", DEFAULT_LAYERS),
                              "activation_scales": activation}
    if activation == "static":
        if precision != "fp8":
            raise ValueError("static activation scales are an fp8 recipe (int8 runs per-row scales)")
        weight_scales = options.get("weight_scales", "tensor")
        if weight_scales not in WEIGHT_SCALES:
            raise ValueError(f"unknown weight_scales {weight_scales!r} (known: {', '.join(WEIGHT_SCALES)})")
        recipe.update(weight_scales=weight_scales, fast_accum=bool(options.get("fast_accum", True)))
    elif {"weight_scales", "fast_accum"} & set(options):
        raise ValueError("weight_scales and fast_accum belong to the static fp8 recipe (activation_scales='static')")
    return recipe


def quantized_module(unet: torch.nn.Module, family: ModelFamily, latent_hw: tuple[int, int],
                     recipe: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """`unet` with the recipe's layers quantized (a copy; the caller's module is untouched), and the
    recipe with its calibrated input peaks (`input_amax`, by layer path) for a static one."""
    if recipe["activation_scales"] == "row":
        return quantized_linears(unet, recipe["precision"], recipe["layers"]), recipe
    paths = transformer_layer_paths(unet, recipe["layers"])
    calls = calibration_inputs(family, latent_hw, count=CALIBRATION_CALLS)
    amax = calibrate_input_amax(unet, paths, calls)
    module = static_fp8_linears(unet, recipe["layers"], amax, recipe["weight_scales"], recipe["fast_accum"])
    return module, {**recipe, "input_amax": amax}
