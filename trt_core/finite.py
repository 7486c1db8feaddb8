"""Weights that are not numbers (NaN or Inf), found before anything is exported from them. Without
this, such a checkpoint was exported whole, then refused by the ONNX check as differing from
PyTorch "by inf", and its export stayed behind in Unet-onnx/."""
from __future__ import annotations

from typing import Mapping

import torch


def non_finite(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def non_finite_problem(stored: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor], dtype: str) -> str:
    """Why weights about to be stored as `dtype` cannot be exported ("" when every one is finite).
    `source` holds the same tensors as the checkpoint gave them, to tell a damaged checkpoint from
    values that only fp16's range cannot hold."""
    bad = non_finite(stored)
    if not bad:
        return ""
    if not non_finite({name: source[name] for name in bad if name in source}):
        return (f"the UNet's weights are not finite in {dtype}: {len(bad)} tensors hold values beyond its range "
                f"(first: {bad[0]}); export them with fp32 weights")
    return (f"the checkpoint's UNet weights are not finite: {len(bad)} of {len(stored)} tensors hold NaN or Inf "
            f"(first: {bad[0]}); the file is damaged or was saved from a training run that diverged")
