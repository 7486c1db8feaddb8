"""The rows that are not our engines: eager PyTorch, eager replayed as one CUDA graph,
torch.compile; and where a step's device time goes, by kernel class."""
from __future__ import annotations

import math
from typing import Any

import torch

from measure import Step, sync


def eager_step(unet: torch.nn.Module) -> Step:
    def step(inputs: tuple) -> torch.Tensor:
        with torch.inference_mode():
            return unet(*inputs)
    return step


def graph_step(unet: torch.nn.Module, example: tuple, device: torch.device) -> Step:
    """The eager UNet captured once as a CUDA graph: static input buffers, replay, copy the output."""
    static = tuple(t.clone() for t in example)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):
            unet(*static)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out = unet(*static)

    def step(inputs: tuple) -> torch.Tensor:
        for s, v in zip(static, inputs):
            s.copy_(v)
        out.fill_(math.nan)  # the replay must overwrite every element
        graph.replay()
        return out.clone()
    return step


def router_step(engine) -> Step:
    """One engine behind trt_core's Router, as the WebUI's hook calls it; a call it does not cover fails."""
    from sd_unet_trt.trt_core.router import Router

    router = Router.from_engines([engine])

    def step(inputs: tuple) -> torch.Tensor:
        result = router.run(*inputs)
        if result.output is None:
            raise AssertionError(f"the router did not cover the call: {result.reason}")
        return result.output
    return step


def compiled_step(unet: torch.nn.Module) -> Step:
    compiled = torch.compile(unet, mode="reduce-overhead", fullgraph=True)

    def step(inputs: tuple) -> torch.Tensor:
        with torch.inference_mode():
            return compiled(*inputs).clone()  # cudagraph trees reuse the output buffer
    return step


def kernel_breakdown(step: Step, inputs: tuple, device: torch.device, top: int = 25) -> dict[str, Any]:
    """Where a step's device time goes, by kernel class (one profiled step without CUDA graphs)."""
    from torch.profiler import ProfilerActivity, profile

    step(inputs)
    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step(inputs)
        sync(device)
    kernels: dict[str, float] = {}
    for event in prof.key_averages():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels[event.key] = kernels.get(event.key, 0.0) + event.device_time_total / 1e3
    classes: dict[str, float] = {}
    for name, ms in kernels.items():
        low = name.lower()
        if any(k in low for k in ("flash", "fmha", "attention")):
            cls = "attention"
        elif any(k in low for k in ("conv", "implicit", "fprop", "dgrad", "wgrad")):
            cls = "convolution"
        elif any(k in low for k in ("gemm", "cutlass", "cublas", "xmma", "nvjet")) or low.startswith("triton_tem"):
            cls = "gemm"
        elif low.startswith("triton"):
            cls = "fused pointwise/norm (triton)"
        elif "memcpy" in low or "memset" in low:
            cls = "copies"
        else:
            cls = "other"
        classes[cls] = classes.get(cls, 0.0) + ms
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1])[:top]
    return {"total_ms": sum(kernels.values()), "by_class_ms": dict(sorted(classes.items(), key=lambda kv: -kv[1])),
            "top_kernels_ms": ranked, "kernel_count": len(kernels), "all_kernels_ms": kernels}


# the ops an activation's quantization adds (Inductor names a fused kernel after the ops it holds)
QUANTIZATION_OPS = ("_to_copy", "clamp", "reciprocal", "mul", "div", "abs", "amax", "max", "expand", "clone", "view")


def separate_quantization_kernels(kernels: dict[str, float]) -> dict[str, float]:
    """Kernels that hold a row-wise amax (a reduction the static recipe should not have) or only an
    activation's quantization (a cast Inductor did not fuse into the kernel producing the
    activation), with their ms: for a static FP8 engine this should be empty."""
    found = {}
    for name, ms in kernels.items():
        if not name.startswith("triton"):
            continue
        ops = name.split("_fused_", 1)[-1].rsplit("_", 1)[0]
        for op in sorted(QUANTIZATION_OPS, key=len, reverse=True):
            ops = ops.replace(op, "")
        if "amax" in name or not ops.strip("_0123456789"):
            found[name] = ms
    return found


