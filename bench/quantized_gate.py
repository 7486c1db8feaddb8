"""The implementation gate on the GPU (issue 22): a quantized engine against its recipe
fake-quantized in PyTorch (trt_core/verify.py, fake_quant.py), and the same figure with a scale
planted 2x off on one layer, so one run shows how far apart a correct engine and a broken one land
and whether the tolerance sits between them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from measure import release

from sd_unet_trt.models.families import ModelFamily  # noqa: E402
from sd_unet_trt.trt_core.backends.torch_compiled.engine_file import read_metadata  # noqa: E402
from sd_unet_trt.trt_core.backends.torch_compiled.fake_quant import fake_quantized, stored_mismatches  # noqa: E402
from sd_unet_trt.trt_core.profiles import Profile  # noqa: E402
from sd_unet_trt.trt_core.verify import IMPLEMENTATION_TOLERANCE, implementation_error  # noqa: E402


def planted_scale(path: Path) -> tuple[int, str]:
    """The stored position and name of the scale to plant a defect in: the middle quantized layer's
    weight scale (an input scale 2x off hardly changes an FP8 output: a power of two only moves exponents)."""
    names = [entry["name"] for entry in read_metadata(path)["weights"]]
    found = [(i, name) for i, name in enumerate(names) if name.endswith("weight_scale")]
    if not found:
        raise ValueError(f"{path} stores no quantization scale")
    return found[len(found) // 2]


def gate_figures(engine: Any, path: Path, master: torch.nn.Module, family: ModelFamily, profile: Profile,
                 device: torch.device) -> dict[str, Any]:
    """The gate's figure for the engine as built, and with one scale doubled in place (restored after)."""
    fake = fake_quantized(master, read_metadata(path)["recipe"], engine.dtype)
    tolerance = IMPLEMENTATION_TOLERANCE[engine.dtype]
    try:
        mismatched = stored_mismatches(fake, engine.stored_weights())
        error = implementation_error(engine, fake, family, profile, device)
        index, name = planted_scale(path)
        scale = engine._weights[index]  # the engine's own stored scale, read by its CUDA graphs
        with torch.no_grad():
            scale.mul_(2)
            try:
                planted = implementation_error(engine, fake, family, profile, device)
                planted_mismatched = stored_mismatches(fake, engine.stored_weights())
            finally:
                scale.div_(2)
    finally:
        del fake
        release(device)
    return {"gate_rel_error": error, "gate_tolerance": tolerance, "gate_stored_mismatches": mismatched[:5],
            "gate_passed": not mismatched and error <= tolerance, "planted_defect": f"{name} x2",
            "planted_rel_error": planted, "planted_refused_by_output": not planted <= tolerance,
            "planted_refused_by_storage": name in planted_mismatched}
