"""The backends, in order of preference, and the process's one instance of each. Each is imported
only when asked for."""
from __future__ import annotations

import importlib
import threading

from sd_unet_trt.trt_core.backends.base import Backend, BackendUnavailable
from sd_unet_trt.trt_core.interrupts import raise_if_interrupted

# name -> "module:class"; TensorRT first, it is the product's primary backend.
REGISTRY = {
    "tensorrt": "sd_unet_trt.trt_core.backends.tensorrt:TensorRTBackend",
    "torch": "sd_unet_trt.trt_core.backends.torch_compiled:TorchCompiledBackend",
    "onnxruntime": "sd_unet_trt.trt_core.backends.onnxruntime:OnnxRuntimeBackend",
}


# (name, options it takes) -> the instance every caller in the process shares: a TensorRT backend
# chooses its library once, and the engines it loads share one activation buffer.
_instances: dict[tuple[str, tuple], Backend] = {}
_instances_lock = threading.Lock()


def backend_class(name: str) -> type[Backend]:
    try:
        module_name, class_name = REGISTRY[name].split(":")
    except KeyError:
        raise BackendUnavailable(f"unknown backend {name!r} (known: {', '.join(REGISTRY)})") from None
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:  # callers take this for "not installed": an interrupt must not pass for that
        raise_if_interrupted(e)
        raise
    return getattr(module, class_name)


def get_backend(name: str, **options) -> Backend:
    """The process's instance of the backend with these options (e.g. cuda_graphs=True), made on
    first use. Options the backend does not take (its `instance_options`) are ignored, so one call
    serves every backend; one left out is its default, so it names the same instance."""
    cls = backend_class(name)
    taken = tuple((key, options.get(key, default)) for key, default in sorted(cls.instance_options.items()))
    with _instances_lock:
        backend = _instances.get((name, taken))
        if backend is None:
            backend = _instances[(name, taken)] = cls(**dict(taken))
        return backend


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
        elif device == "cpu" and backend.slow_on_cpu:
            reasons.append(f"{name}: slow to compile on the CPU (--backend {name} picks it)")
        elif backend.can_run(device):
            builds_only.append(backend)
        else:
            usable.append(backend)
    if usable or builds_only:
        return (usable or builds_only)[0]
    raise BackendUnavailable("no backend can build here: " + "; ".join(reasons))
