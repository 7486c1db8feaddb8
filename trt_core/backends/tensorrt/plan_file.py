"""Engine files: a small JSON header (library and version, the GPUs it was built for, profile,
precision, whether it can be refitted) followed by the serialized plan. The header lets `load`
refuse an engine of another library, version or GPU with a reason, before the library would reject
it with an opaque error. TensorRT for RTX engines are portable across the compute capabilities
they were built for; the library's own validity check has the last word on a GPU."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from sd_unet_trt.trt_core.backends.base import EngineFileError
from sd_unet_trt.trt_core.manifest import PORTABLE_ARCH as PORTABLE  # built for `targets`

MAGIC = b"SD-UNET-TRT\x00"
FORMAT = 2  # 2: library, targets


class StaleEngineError(RuntimeError):
    """The engine was built for another GPU, library or version; it must be rebuilt."""


@dataclass(frozen=True)
class PlanHeader:
    library: str  # "tensorrt" or "tensorrt_rtx"
    version: str
    gpu_arch: str  # "sm_89" when built for one GPU, PORTABLE when for `targets`
    precision: str
    refittable: bool
    input_shapes: dict[str, Any]  # name -> [min, opt, max]
    targets: list[str] = field(default_factory=list)  # "sm_80", ... the engine runs on
    format: int = FORMAT

    def stale_reason(self, library: str, version: str, gpu_arch: str) -> str:
        """Why this engine cannot run with `library` `version` on `gpu_arch` ("" when it can)."""
        problems = []
        if (self.library, self.version) != (library, version):
            problems.append(f"built with {self.library} {self.version}, this is {library} {version}")
        runs_on = self.targets if self.gpu_arch == PORTABLE else [self.gpu_arch]
        if gpu_arch not in runs_on:
            problems.append(f"built for {', '.join(runs_on)}, this GPU is {gpu_arch}")
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
        if fields.get("format") != FORMAT:
            raise EngineFileError(f"engine file format {fields.get('format')}, this extension reads {FORMAT}; rebuild it")
        header = PlanHeader(**fields)
    except (ValueError, TypeError, AttributeError) as e:
        if isinstance(e, EngineFileError):
            raise
        raise EngineFileError(f"damaged engine header ({e}); rebuild the engine") from None
    return header, start + size


def unpack(data: bytes | memoryview) -> tuple[PlanHeader, memoryview]:
    header, offset = read_header(data)
    plan = memoryview(data)[offset:]
    if not len(plan):
        raise EngineFileError("the engine file holds no plan (truncated); rebuild it")
    return header, plan
