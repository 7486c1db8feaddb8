"""The UNet's own GEMMs, one by one, in each 8-bit path against fp16 (issue 22): which products pay
on this GPU. The shapes are those of the transformer blocks' linear layers in one call of the
workload (batch 2), each timed alone inside a CUDA graph of repeats (no launch overhead):

- fp16: F.linear, cuBLAS;
- int8: torch._int_mm (CUTLASS; the operands already quantized), the torch backend's INT8 product;
- fp8_tensor / fp8_tensor_exact: torch._scaled_mm with per-tensor scales, with and without
  cuBLASLt's fast accumulation (the static FP8 recipe); fp8_row: row-wise scales (the per-row recipe);
- torchao_int8: torchao's dynamic INT8 linear (activation quantization included), when torchao
  is importable.

Totals are weighted by how often each shape occurs in one UNet call. `int8_pays` answers the torch
backend's INT8 rule (trt_core/backends/torch_compiled/recipe.py, INT8_SLOWER_FROM) for this GPU."""
from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any, Callable

import torch
import torch.nn.functional as F

from measure import log, sync

from sd_unet_trt.models.unet import BasicTransformerBlock  # noqa: E402

REPEATS = 20


def linear_shapes(unet: torch.nn.Module, inputs: tuple) -> Counter:
    """(M, K, N) of every linear layer inside a transformer block in one call, with counts."""
    shapes: Counter = Counter()
    handles = []
    for block in (m for m in unet.modules() if isinstance(m, BasicTransformerBlock)):
        for layer in (m for m in block.modules() if isinstance(m, torch.nn.Linear)):
            handles.append(layer.register_forward_pre_hook(
                lambda mod, args: shapes.update([(args[0].numel() // mod.in_features, mod.in_features,
                                                  mod.out_features)])))
    try:
        with torch.no_grad():
            unet(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return shapes


def device_ms(fn: Callable[[], Any], device: torch.device) -> float:
    """Median time of one call of `fn`, replayed in a CUDA graph of REPEATS calls (on the CPU: wall
    clock of a few calls, for the smoke run)."""
    fn()
    sync(device)
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(3):
            fn()
        return (time.perf_counter() - start) / 3 * 1e3
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPEATS):
            fn()
    graph.replay()
    sync(device)
    times = []
    for _ in range(5):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / REPEATS)
    return statistics.median(times)


def _products(m: int, k: int, n: int, device: torch.device) -> dict[str, Callable[[], Any]]:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    x, w = torch.randn(m, k, device=device, dtype=dtype), torch.randn(n, k, device=device, dtype=dtype) / k ** 0.5
    xi, wi = (x * 20).round().clamp(-127, 127).to(torch.int8), (w * 2000).round().clamp(-127, 127).to(torch.int8)
    x8, w8 = x.to(torch.float8_e4m3fn), (w * k ** 0.5).to(torch.float8_e4m3fn)
    one = torch.tensor(1.0, device=device)
    rows, cols = torch.ones(m, 1, device=device), torch.ones(1, n, device=device)
    products = {
        "fp16": lambda: F.linear(x, w),
        "int8": lambda: torch._int_mm(xi, wi.t()),
        "fp8_tensor": lambda: torch._scaled_mm(x8, w8.t(), scale_a=one, scale_b=one, out_dtype=dtype,
                                               use_fast_accum=True),
        "fp8_tensor_exact": lambda: torch._scaled_mm(x8, w8.t(), scale_a=one, scale_b=one, out_dtype=dtype),
        "fp8_row": lambda: torch._scaled_mm(x8, w8.t(), scale_a=rows, scale_b=cols, out_dtype=dtype,
                                            use_fast_accum=True),
    }
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return products
    linear = torch.nn.Linear(k, n, bias=False, device=device, dtype=dtype)
    quantize_(linear, Int8DynamicActivationInt8WeightConfig())
    products["torchao_int8"] = lambda: linear(x)
    return products


def measure_shapes(shapes: Counter, device: torch.device) -> dict[str, Any]:
    rows, totals = [], Counter()
    for (m, k, n), count in sorted(shapes.items()):
        row: dict[str, Any] = {"m": m, "k": k, "n": n, "count": count, "ms": {}, "failed": {}}
        with torch.no_grad():
            for name, fn in _products(m, k, n, device).items():
                try:
                    row["ms"][name] = device_ms(fn, device)
                except Exception as e:  # one path that cannot run this shape must not cost the others
                    row["failed"][name] = f"{type(e).__name__}: {str(e)[:200]}"
        for name, ms in row["ms"].items():
            totals[name] += ms * count
        rows.append(row)
    log(f"GEMM shapes, ms per UNet call by path: {dict(totals)}")
    complete = [name for name in totals if all(name in r["ms"] for r in rows)]
    return {"shapes": rows, "total_ms": {name: totals[name] for name in complete},
            "int8_pays": "int8" in complete and totals["int8"] < totals["fp16"],
            "flop_per_call": sum(2 * m * k * n * c for (m, k, n), c in shapes.items())}
