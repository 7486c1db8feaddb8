"""Pure decisions about the GPU: the builder's workspace; and what the GPU is (`probe_gpu`)."""
from __future__ import annotations

from dataclasses import dataclass

MIB = 1024**2
GIB = 1024**3
MIN_WORKSPACE = 256 * MIB


def workspace_limit(free_bytes: int, total_bytes: int, weight_bytes: int) -> int:
    """The builder's workspace pool, sized from free VRAM so SDXL builds fit on 8-12 GB cards.

    While it builds, TensorRT keeps the network's weights on the GPU and times tactics that each
    may take up to the workspace limit; by default that limit is the whole card, which fails on
    small cards. We leave room for the weights plus a reserve (10 % of the card, at least 1 GiB,
    for the CUDA context, cuDNN/cuBLAS handles and fragmentation) and give the builder the rest,
    never less than 256 MiB (below that too few tactics qualify to build at all)."""
    if free_bytes < 0 or total_bytes <= 0 or weight_bytes < 0:
        raise ValueError("memory figures must be non-negative")
    reserve = max(GIB, total_bytes // 10)
    room = min(free_bytes, total_bytes) - weight_bytes - reserve
    return max(MIN_WORKSPACE, room // MIB * MIB)


@dataclass(frozen=True)
class GpuInfo:
    available: bool
    capability: tuple[int, int] | None = None
    free_bytes: int = 0
    total_bytes: int = 0
    name: str = ""


def probe_gpu(device: str = "cuda") -> GpuInfo:
    import torch

    if not torch.cuda.is_available():
        return GpuInfo(False)
    dev = torch.device(device)
    dev = dev if dev.type == "cuda" else torch.device("cuda")
    free, total = torch.cuda.mem_get_info(dev)
    return GpuInfo(True, tuple(torch.cuda.get_device_capability(dev)), free, total, torch.cuda.get_device_name(dev))
