"""The extension's section in the WebUI's settings, and reading it (defaults when the settings
UI was never built, e.g. with --nowebui)."""
from __future__ import annotations

import gradio as gr

from modules import shared

from sd_unet_trt.trt_core.backends import REGISTRY
from sd_unet_trt.trt_core.backends.tensorrt import library as trt_library
from sd_unet_trt.trt_core.hook_policy import AUTOMATIC

SECTION = ("sd_unet_trt", "TensorRT UNet")
BACKEND, VRAM_BUDGET_MB, CUDA_GRAPHS, FALLBACK = ("trt_unet_backend", "trt_unet_vram_budget_mb",
                                                  "trt_unet_cuda_graphs", "trt_unet_fallback")
FALLBACK_WARN = "Built-in UNet, one console warning per generation"
FALLBACK_QUIET = "Built-in UNet, no console warning (infotext only)"
FALLBACK_INTERRUPT = "Built-in UNet for that step, then stop the generation"
FALLBACK_CHOICES = [FALLBACK_WARN, FALLBACK_QUIET, FALLBACK_INTERRUPT]
TENSORRT_LIBRARY = "trt_unet_tensorrt_library"
TRITON_URL = "trt_unet_triton_url"
LIBRARY_CHOICES = {AUTOMATIC: trt_library.AUTOMATIC, **{label: name for name, label in trt_library.LABELS.items()}}
DEFAULTS = {BACKEND: AUTOMATIC, VRAM_BUDGET_MB: 0, CUDA_GRAPHS: True, FALLBACK: FALLBACK_WARN,
            TENSORRT_LIBRARY: AUTOMATIC, TRITON_URL: ""}


def register() -> None:
    """on_ui_settings: one section with the extension's settings."""
    def option(key, label, component, args=None, info=""):
        opt = shared.OptionInfo(DEFAULTS[key], label, component, args, section=SECTION)
        shared.opts.add_option(key, opt.info(info) if info else opt)

    option(BACKEND, "Preferred engine backend", gr.Radio, {"choices": [AUTOMATIC, *REGISTRY]},
           "used first when engines of several backends cover a call; Automatic = TensorRT, then torch, then ONNX Runtime")
    option(VRAM_BUDGET_MB, "VRAM budget for resident engines (MB, 0 = no limit)", gr.Number, {"precision": 0},
           "engines beyond it are unloaded, least recently used first; the built-in UNet's weights count too after a fallback")
    option(CUDA_GRAPHS, "Replay engines as CUDA graphs", gr.Checkbox, None,
           "fewer kernel launches per step; takes effect when engines are next loaded")
    option(FALLBACK, "When no engine covers a UNet call", gr.Radio, {"choices": FALLBACK_CHOICES})
    option(TENSORRT_LIBRARY, "TensorRT library", gr.Radio, {"choices": list(LIBRARY_CHOICES)},
           "Automatic = TensorRT for RTX on GeForce/RTX cards (compute capability 8.0, 8.6, 8.9, 12.x), TensorRT "
           "10/11 elsewhere (Hopper, data-center Blackwell, Turing); engines of the other library are not used; "
           "takes effect after a restart")
    option(TRITON_URL, "Triton Inference Server for UNet calls (host:port, HTTP; empty = none)", gr.Textbox, None,
           "its engines of the loaded checkpoint (python -m sd_unet_trt export-triton) serve the calls they cover "
           "before local ones; a call it cannot answer runs locally; needs tritonclient[http] in the WebUI's venv")


def get(key: str):
    value = shared.opts.data.get(key, DEFAULTS[key]) if shared.opts is not None else DEFAULTS[key]
    return DEFAULTS[key] if value is None else value


def vram_budget_bytes() -> int | None:
    try:
        mb = int(float(get(VRAM_BUDGET_MB)))
    except (TypeError, ValueError):
        return None
    return mb * 1024 * 1024 if mb > 0 else None


def preferred_backend() -> str:
    value = str(get(BACKEND))
    return value if value in REGISTRY else AUTOMATIC


def cuda_graphs() -> bool:
    return bool(get(CUDA_GRAPHS))


def fallback_policy() -> str:
    value = get(FALLBACK)
    return value if value in FALLBACK_CHOICES else FALLBACK_WARN


def tensorrt_library() -> str:
    """The library name the setting asks for (trt_library.AUTOMATIC, TENSORRT or TENSORRT_RTX)."""
    return LIBRARY_CHOICES.get(str(get(TENSORRT_LIBRARY)), trt_library.AUTOMATIC)


def triton_url() -> str:
    return str(get(TRITON_URL) or "").strip().removeprefix("http://")
