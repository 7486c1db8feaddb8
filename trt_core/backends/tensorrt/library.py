"""Finding the `tensorrt` module and deciding whether this machine can use it."""
from __future__ import annotations

import importlib
from types import ModuleType

import torch

SUPPORTED_MAJOR = 10
MIN_CAPABILITY = (7, 5)  # TensorRT 10's current releases support Turing and newer


def pip_requirement(cuda_version: str | None) -> str | None:
    """The TensorRT package matching PyTorch's CUDA major version, e.g. "12.1" -> tensorrt-cu12;
    None when PyTorch has no CUDA (nothing TensorRT could run on)."""
    if not cuda_version:
        return None
    major = cuda_version.split(".")[0]
    if major not in ("12", "13"):
        return None
    return f"tensorrt-cu{major}>={SUPPORTED_MAJOR}.0,<{SUPPORTED_MAJOR + 1}"


def install_hint() -> str:
    requirement = pip_requirement(torch.version.cuda) or f"tensorrt-cu12>={SUPPORTED_MAJOR}.0,<{SUPPORTED_MAJOR + 1}"
    return f'pip install "{requirement}"'


def import_tensorrt() -> ModuleType | None:
    try:
        return importlib.import_module("tensorrt")
    except Exception:  # ImportError, or a broken install raising OSError on a missing .so
        return None


def major_version(trt: ModuleType) -> int:
    try:
        return int(str(trt.__version__).split(".")[0])
    except (AttributeError, ValueError):
        return -1


def unavailable_reason(trt: ModuleType | None, cuda_available: bool, capability: tuple[int, int] | None) -> str:
    """Why TensorRT cannot run here ("" when it can), as one line a user can act on."""
    if trt is None:
        reason = f"TensorRT is not installed ({install_hint()})"
        if torch.version.cuda is None:
            reason += "; it also needs a CUDA build of PyTorch and an NVIDIA GPU"
        return reason
    if major_version(trt) != SUPPORTED_MAJOR:
        return (f"TensorRT {getattr(trt, '__version__', '?')} is installed; this extension supports TensorRT "
                f"{SUPPORTED_MAJOR}.x ({install_hint()})")
    if not cuda_available:
        return "no CUDA GPU is visible to PyTorch (TensorRT needs an NVIDIA GPU and driver)"
    if capability is not None and capability < MIN_CAPABILITY:
        return (f"this GPU (compute capability {capability[0]}.{capability[1]}) is older than TensorRT "
                f"{SUPPORTED_MAJOR} supports (7.5, Turing, or newer)")
    return ""
