"""The torch backend's build variants the UNet step benchmark compares (bench/unet_speed.py), with
the time each may take per model, and the profile they are built for."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import checkout  # noqa: F401  (sd_unet_trt from this checkout)
from sd_unet_trt.trt_core.profiles import Profile  # noqa: E402
from workloads import Workload

@dataclass(frozen=True)
class Variant:
    """One way of building the torch backend: build options (BuildRequest.options) over the
    backend's defaults."""
    build: dict[str, Any]
    build_budget_s: dict[str, float]  # per model: time a build + check + timing may take

    def build_key(self) -> str:
        return json.dumps(self.build, sort_keys=True)


PLAIN = {"sd15": 100, "sdxl": 170, "tiny": 150}
SLOWER = {"sd15": 160, "sdxl": 260, "tiny": 300}
# Measured: an SD1.5 build with GEMM/conv autotuning ran past 7 minutes (bench/NOTES.md)
AUTOTUNE = {"sd15": 540, "sdxl": 1200, "tiny": 600}
VARIANTS: dict[str, Variant] = {
    "default": Variant({}, PLAIN),
    "nchw": Variant({"channels_last": False}, PLAIN),
    "conv1x1_mm": Variant({"inductor": {"conv_1x1_as_mm": True}}, PLAIN),
    # Triton configs of the pointwise/reduction kernels tuned by coordinate descent
    "coord_descent": Variant({"inductor": {"coordinate_descent_tuning": True}}, SLOWER),
    # SDPA kernel fixed at compile time, cuDNN's first / FlashAttention-2's first
    "cudnn_attn": Variant({"attention": ["cudnn", "flash", "efficient"]}, PLAIN),
    "flash_attn": Variant({"attention": ["flash", "efficient"]}, PLAIN),
    # q/k/v projections as three GEMMs (the default fuses them into one; k/v one in cross-attention)
    "unfused": Variant({"fuse_projections": False}, PLAIN),
    # Triton GEMM and convolution templates next to cuBLAS/cuDNN, with fused epilogues
    "autotune": Variant({"inductor": {"max_autotune_gemm": True}}, AUTOTUNE),
}

def profile_for(work: Workload, kind: str) -> Profile:
    if kind != "static":
        raise ValueError(f"unknown profile kind {kind!r}")
    return Profile.static(1, work.px, work.px)
