"""Where a build takes the UNet from: a checkpoint file (the WebUI, the command line) or a module in
memory (the built-in tiny model, tests). Both export the same way and give the PyTorch reference
the engines are checked against; a file is read afresh for each, never taken from a model in
memory that may hold a merged LoRA."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.checkpoint_file import CheckpointError, FileStamp, unet_from_file, unet_shapes
from sd_unet_trt.trt_core.export import ExportResult, export_onnx, shadow_unet
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.progress import CancelToken, ProgressFn, no_progress


@dataclass(frozen=True)
class CheckpointUNet:
    """The UNet of a checkpoint file, identified by the file's sha256 and checked unchanged (size and
    modification time) whenever it is read."""
    path: Path
    checkpoint: CheckpointId
    family: ModelFamily
    stamp: FileStamp
    prediction: str = "eps"

    def require_unchanged(self) -> None:
        if FileStamp.of(self.path) != self.stamp:
            raise CheckpointError(f"{self.path.name} changed on disk since it was hashed; load it again and retry")

    def parameters(self) -> int:
        return sum(t.numel() for t in unet_shapes(self.path).values())

    def export(self, out_dir: Path, weights: str, device: torch.device | str | None = None,
               progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> ExportResult:
        from sd_unet_trt.trt_core.export_process import export_checkpoint_file

        self.require_unchanged()
        return export_checkpoint_file(self.path, self.checkpoint.sha256, self.stamp, self.family.name, out_dir,
                                      weights, self.prediction, str(torch.device(device or "cpu")), progress, cancel)

    def load(self, dtype: torch.dtype, device: torch.device | str) -> torch.nn.Module:
        self.require_unchanged()
        unet = unet_from_file(self.path, self.family, dtype, device)
        self.require_unchanged()
        return unet


@dataclass(frozen=True)
class ModuleUNet:
    """A UNet module in memory, exported and compared as it is (its tensors are shared, not copied)."""
    module: torch.nn.Module
    checkpoint: CheckpointId
    family: ModelFamily

    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def export(self, out_dir: Path, weights: str, device: torch.device | str | None = None,
               progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> ExportResult:
        return export_onnx(self.module, self.family, out_dir, weights=weights, device=device, progress=progress,
                           cancel=cancel, checkpoint_sha256=self.checkpoint.sha256)

    def load(self, dtype: torch.dtype, device: torch.device | str) -> torch.nn.Module:
        return shadow_unet(self.module, self.family, dtype).to(device)


UNetSource = CheckpointUNet | ModuleUNet
