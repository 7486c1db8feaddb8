"""The backends, in order of preference. Each is imported only when asked for."""
from __future__ import annotations

import importlib

from sd_unet_trt.trt_core.backends.base import Backend, BackendUnavailable
from sd_unet_trt.trt_core.interrupts import raise_if_interrupted

# name -> "module:class"; TensorRT first, it is the product's primary backend.
REGISTRY = {
    "tensorrt": "sd_unet_trt.trt_core.backends.tensorrt:TensorRTBackend",
    "torch": "sd_unet_trt.trt_core.backends.torch_compiled:TorchCompiledBackend",
    "onnxruntime": "sd_unet_trt.trt_core.backends.onnxruntime:OnnxRuntimeBackend",
}


def get_backend(name: str) -> Backend:
    try:
        module_name, class_name = REGISTRY[name].split(":")
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r} (known: {', '.join(REGISTRY)})") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:  # callers take this for "not installed": an interrupt must not pass for that
        raise_if_interrupted(e)
        raise
    return getattr(module, class_name)()


def all_backends() -> list[Backend]:
    """Every backend whose module is present, available on this machine or not."""
    out = []
    for name in REGISTRY:
        try:
            out.append(get_backend(name))
        except ImportError:
            continue
    return out


def available_backends() -> list[Backend]:
    return [b for b in all_backends() if b.availability().available]


# Inductor's C++ compile of even the tiny UNet takes minutes on a small CPU: not chosen there unless named.
SLOW_ON_CPU = {"torch"}


def best_backend(device: str) -> Backend:
    """The first backend (in the registry's order of preference) that builds and runs here; else the
    first that builds at all (TensorRT for RTX builds without a GPU). The CLI's `build` and the tab's
    default both take this one."""
    usable, builds_only, reasons = [], [], []
    for name in REGISTRY:
        try:
            backend = get_backend(name)
        except (ImportError, BackendUnavailable) as e:
            reasons.append(f"{name}: {e}")
            continue
        status = backend.availability()
        if not status.available:
            reasons.append(f"{name}: {status.reason}")
        elif device == "cpu" and name in SLOW_ON_CPU:
            reasons.append(f"{name}: slow to compile on the CPU (--backend {name} picks it)")
        elif backend.can_run(device):
            builds_only.append(backend)
        else:
            usable.append(backend)
    if usable or builds_only:
        return (usable or builds_only)[0]
    raise BackendUnavailable("no backend can build here: " + "; ".join(reasons))
