"""Measuring on a device: synchronising, NaN-poisoned memory, relative error, checks against a
reference, step timing (CUDA events, medians of two blocks), memory footprints, the environment and
the measured GEMM ceiling."""
from __future__ import annotations

import gc
import math
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

Step = Callable[[tuple[torch.Tensor, ...]], torch.Tensor]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def poison_free_memory(device: torch.device) -> None:
    """Fill the allocator's cached free blocks with NaN, so an output element no kernel wrote
    reads as NaN instead of a plausible leftover value."""
    if device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(device)
    cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    size = max(cached, 0) + min(free // 4, 2 << 30)
    block = torch.empty(size, dtype=torch.uint8, device=device)
    block.fill_(0xFF)  # all-ones bits: NaN in fp16, bf16 and fp32
    del block


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    if not torch.isfinite(out).all():
        return math.inf
    return ((out - ref).norm() / ref.norm()).item()


@dataclass
class Checks:
    """Fresh input sets with their fp32 reference outputs (computed once, reference freed after)."""
    inputs: list[tuple]
    refs: list[torch.Tensor]

    def worst(self, step: Step, device: torch.device) -> float:
        worst = 0.0
        for inputs, ref in zip(self.inputs, self.refs):
            poison_free_memory(device)
            out = step(inputs)
            sync(device)
            if out.shape != ref.shape:
                raise AssertionError(f"output shape {tuple(out.shape)}, expected {tuple(ref.shape)}")
            worst = max(worst, rel_error(out, ref))
        return worst


def time_steps(step: Step, input_sets: list[tuple], device: torch.device, min_repeats: int,
               seconds: float) -> dict[str, Any]:
    """Median ms per step in two blocks; each step starts on an idle stream so host work counts."""
    for inputs in input_sets * 2:  # warm-up
        step(inputs)
    sync(device)
    t0 = time.perf_counter()
    step(input_sets[0])
    sync(device)
    once = time.perf_counter() - t0
    repeats = max(min_repeats, min(1000, int(seconds / 2 / max(once, 1e-6))))
    blocks = []
    for _ in range(2):
        times = []
        for i in range(repeats):
            inputs = input_sets[i % len(input_sets)]
            sync(device)
            if device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                step(inputs)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                step(inputs)
                times.append((time.perf_counter() - t0) * 1e3)
        blocks.append(times)
    all_times = sorted(blocks[0] + blocks[1])
    return {"median_ms": statistics.median(all_times), "block_medians_ms": [statistics.median(b) for b in blocks],
            "p10_ms": all_times[len(all_times) // 10], "p90_ms": all_times[len(all_times) * 9 // 10],
            "repeats": 2 * repeats}


def used_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    free, total = torch.cuda.mem_get_info(device)
    return total - free


@dataclass
class Footprint:
    """Device memory a row owns: its weights plus the peak of what PyTorch's allocator reserves
    while it runs (workspace, CUDA-graph pools), plus what it holds outside the allocator
    (AOTInductor's weights)."""
    device: torch.device
    owned: int = 0  # bytes already allocated that belong to the row (eager weights)
    outside: int = 0
    base: int = 0

    def start(self) -> None:
        release(self.device)
        self.base = torch.cuda.memory_reserved(self.device) - self.owned if self.device.type == "cuda" else 0

    def reset_peak(self) -> None:
        release(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def mib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return (torch.cuda.max_memory_reserved(self.device) - self.base + self.outside) / 2**20


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
                           "date": time.strftime("%Y-%m-%d")}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(gpu=props.name, sms=props.multi_processor_count, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    else:
        env["cpu"] = platform.processor() or platform.machine()
    return env


def matmul_ceiling(device: torch.device) -> float | None:
    """Measured dense fp16 GEMM rate (TFLOP/s), the ceiling the step's FLOPs are held to."""
    if device.type != "cuda":
        return None
    n = 8192
    a, b = (torch.randn(n, n, device=device, dtype=torch.float16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        a @ b
    end.record()
    end.synchronize()
    return 2 * n**3 * 20 / (start.elapsed_time(end) / 1e3) / 1e12


