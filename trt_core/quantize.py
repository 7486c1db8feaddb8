"""INT8 and FP8 UNets for TensorRT: NVIDIA's Model Optimizer (nvidia-modelopt) inserts quantizers,
calibrates their static scales on the model's own activations, and the ONNX export carries them as
explicit Q/DQ nodes, which TensorRT 10/11 and TensorRT for RTX build from (TensorRT 11 has no
calibrators; explicit quantization is the one way in).

Calibration inputs are what the UNet sees inside the WebUI's sampler: latents scaled by
c_in = 1/sqrt(sigma^2 + 1), so of unit variance at every step, at timesteps spread over the whole
schedule, and text embeddings of CLIP's statistics (unit variance after its final layer norm).
Random embeddings stand in for prompts: the scales are per tensor, and what sets them is the spread
of the activations, which these reproduce; the quality loop (quality.py) measures what that costs."""
from __future__ import annotations

import copy
import importlib.util

import torch

from sd_unet_trt.errors import UserError
from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.export_tools import export_tools_path
from sd_unet_trt.trt_core.interrupts import raise_if_interrupted
from sd_unet_trt.trt_core.precision import PRECISIONS, QUANTIZED


class QuantizationUnavailable(UserError, RuntimeError):
    """nvidia-modelopt is not installed where the export runs."""


def _modelopt():
    try:
        import modelopt.torch.quantization as mtq
    except Exception as e:  # ImportError, or a broken install
        raise_if_interrupted(e)
        raise QuantizationUnavailable(
            f"INT8 and FP8 exports need NVIDIA's Model Optimizer (pip install nvidia-modelopt): {e}") from e
    return mtq


def exporter_problem() -> str | None:
    """Why a Q/DQ export cannot be made here (Model Optimizer is missing where the export runs: this
    Python, or install.py's export-tools folder the export child puts first on its path), or None."""
    tools = export_tools_path()
    if importlib.util.find_spec("modelopt") is not None or (tools is not None and (tools / "modelopt").is_dir()):
        return None
    return ("int8 and fp8 TensorRT engines are built from a Q/DQ export made by NVIDIA's Model Optimizer, "
            "which is not installed where the export runs (pip install nvidia-modelopt)")


def capability_problem(precision: str, capability: tuple[int, int] | None) -> str | None:
    """Why this GPU cannot run engines of this precision, or None. No GPU: nothing to say here (the
    build targets the GPUs the library is told of)."""
    known = PRECISIONS.get(precision)
    needed = known.min_capability if known else None
    if needed is None or capability is None or capability >= needed:
        return None
    return (f"{precision} engines need a GPU of compute capability {needed[0]}.{needed[1]} or newer "
            f"(this one is {capability[0]}.{capability[1]})")


def calibration_inputs(family: ModelFamily, latent_hw: tuple[int, int], count: int = 8, rows: int = 2,
                       seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """`count` calls of `rows` rows, float32 on the CPU, timesteps from 999 down to 0."""
    generator = torch.Generator().manual_seed(seed)
    calls = []
    for i in range(count):
        t = 999.0 * (count - 1 - i) / max(count - 1, 1)
        x = torch.randn(rows, family.in_channels, *latent_hw, generator=generator)
        context = torch.randn(rows, 77, family.context_dim, generator=generator)
        call = (x, torch.full((rows,), t), context)
        calls.append(call + (torch.randn(rows, family.y_dim, generator=generator),) if family.y_dim else call)
    return calls


def quantized_unet(unet: torch.nn.Module, precision: str, calibration: list[tuple[torch.Tensor, ...]],
                   in_place: bool = False) -> torch.nn.Module:
    """`unet` (a copy of it unless `in_place`: a full-size UNet twice over may not fit) with
    calibrated INT8 or FP8 quantizers on its convolutions and linear layers (Model Optimizer's
    default recipes: per-channel weights, per-tensor activations). Runs on the module's device and
    dtype."""
    if precision not in QUANTIZED:
        raise ValueError(f"unknown quantized precision {precision!r} (known: {', '.join(QUANTIZED)})")
    mtq = _modelopt()
    config = getattr(mtq, PRECISIONS[precision].modelopt_config)
    parameter = next(unet.parameters())
    model = (unet if in_place else copy.deepcopy(unet)).eval()

    def forward_loop(m: torch.nn.Module) -> None:
        with torch.no_grad():
            for call in calibration:
                m(*(t.to(parameter.device, parameter.dtype if t.is_floating_point() and t.dim() > 1 else t.dtype)
                    for t in call))
    return mtq.quantize(model, config, forward_loop)
