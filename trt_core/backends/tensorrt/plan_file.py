"""Engine files: a small JSON header (TensorRT version, GPU architecture, profile, precision)
followed by the serialized TensorRT plan. The header lets `load` refuse an engine built for another
GPU or TensorRT version with a reason, before TensorRT would reject it with an opaque error."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

MAGIC = b"SD-UNET-TRT\x00"
FORMAT = 1


class EngineFileError(ValueError):
    """The file is not an engine of this extension, or is damaged."""


class StaleEngineError(RuntimeError):
    """The engine was built for another GPU architecture or TensorRT version; it must be rebuilt."""


@dataclass(frozen=True)
class PlanHeader:
    tensorrt: str
    gpu_arch: str
    precision: str
    refittable: bool
    input_shapes: dict[str, Any]  # name -> [min, opt, max]
    format: int = FORMAT

    def stale_reason(self, tensorrt: str, gpu_arch: str) -> str:
        """Why this engine cannot run with `tensorrt` on `gpu_arch` ("" when it can)."""
        problems = []
        if self.tensorrt != tensorrt:
            problems.append(f"built with TensorRT {self.tensorrt}, this is TensorRT {tensorrt}")
        if self.gpu_arch != gpu_arch:
            problems.append(f"built for {self.gpu_arch}, this GPU is {gpu_arch}")
        return "; ".join(problems) + ("; rebuild it" if problems else "")


def pack(header: PlanHeader, plan: bytes | memoryview) -> list[bytes | memoryview]:
    """The file's pieces in order (the plan is not copied: SDXL plans are gigabytes)."""
    head = json.dumps(asdict(header), sort_keys=True).encode()
    return [MAGIC, len(head).to_bytes(4, "little"), head, plan]


def read_header(data: bytes | memoryview) -> tuple[PlanHeader, int]:
    """The header, and where the plan starts."""
    view = memoryview(data)
    if bytes(view[:len(MAGIC)]) != MAGIC:
        raise EngineFileError("not a TensorRT engine file of this extension (no header); rebuild it")
    start = len(MAGIC) + 4
    size = int.from_bytes(view[len(MAGIC):start], "little")
    try:
        fields = json.loads(bytes(view[start:start + size]))
        header = PlanHeader(**fields)
    except (ValueError, TypeError) as e:
        raise EngineFileError(f"damaged engine header ({e}); rebuild the engine") from None
    if header.format != FORMAT:
        raise EngineFileError(f"engine file format {header.format}, this extension reads {FORMAT}; rebuild it")
    return header, start + size


def unpack(data: bytes | memoryview) -> tuple[PlanHeader, memoryview]:
    header, offset = read_header(data)
    plan = memoryview(data)[offset:]
    if not len(plan):
        raise EngineFileError("the engine file holds no plan (truncated); rebuild it")
    return header, plan
