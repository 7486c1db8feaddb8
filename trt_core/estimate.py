"""Before a build: about how much disk, GPU memory and time it will take.

Disk follows from the weights (an engine holds them once, in the build precision; the ONNX is
written once per checkpoint). Memory adds the activations at the profile's largest shape. Time
comes from earlier builds of the same family and backend in the manifest when there are any,
else from the backend's own rate (Backend.build_rate); both are labelled as what they are.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.backends import backend_class
from sd_unet_trt.trt_core.manifest import CheckpointId, EngineEntry
from sd_unet_trt.trt_core.pipeline import onnx_weights
from sd_unet_trt.trt_core.precision import PRECISIONS, QUANTIZED
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.workspace import Workspace

BYTES = {name: p.bytes_per_weight for name, p in PRECISIONS.items()}  # quantized: activations stay fp16
# Peak activation bytes per latent pixel per row, in units of model_channels x element size:
# the widest level keeps about this many feature maps alive at once (skip connections included).
ACTIVATION_MAPS = 40
DYNAMIC_FACTOR = 1.5  # dynamic profiles time tactics over ranges


@dataclass(frozen=True)
class Estimate:
    engine_bytes: int
    onnx_bytes: int  # 0 when the checkpoint's ONNX is already there
    memory_bytes: int
    memory_kind: str  # "VRAM" or "RAM"
    build_seconds: float
    time_basis: str

    @property
    def disk_bytes(self) -> int:
        return self.engine_bytes + self.onnx_bytes


def _is_dynamic(profile: Profile) -> bool:
    return any(r.min != r.max for r in (profile.batch, profile.height, profile.width, profile.tokens))


def estimate(parameters: int, family: ModelFamily, profile: Profile, precision: str, backend: str,
             device: str, workspace: Workspace, checkpoint: CheckpointId,
             history: list[EngineEntry] | None = None) -> Estimate:
    backend_type = backend_class(backend)
    weights = onnx_weights(precision, precision in QUANTIZED and backend_type.quantizes_onnx)
    onnx_there = (workspace.onnx_folder(checkpoint, family, weights) / "unet.onnx").is_file()
    engine_bytes = parameters * BYTES[precision]
    latent_px = (profile.height.max // 8) * (profile.width.max // 8)
    activations = (profile.rows.max * latent_px * family.base_config.model_channels * max(BYTES[precision], 2)
                   * ACTIVATION_MAPS)
    memory = engine_bytes + activations
    if history is None:
        history = workspace.manifest().entries() if workspace.manifest().path.exists() else []
    past = [e.build_seconds for e in history if e.family == family.name and e.backend == backend and e.build_seconds]
    if past:
        seconds = statistics.median(past)
        basis = f"median of {len(past)} earlier {backend} build{'s' * (len(past) > 1)} of {family.label} here"
    else:
        fixed, per_billion = backend_type.build_rate
        seconds = (fixed + per_billion * parameters / 1e9) * (DYNAMIC_FACTOR if _is_dynamic(profile) else 1.0)
        basis = f"rough guess for {backend}; later estimates use your own build times"
    return Estimate(engine_bytes, 0 if onnx_there else parameters * BYTES[weights if weights in ('fp16', 'fp32') else 'fp32'], memory,
                    "VRAM" if device == "cuda" else "RAM", seconds, basis)


def human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def human_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min"
