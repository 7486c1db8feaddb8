"""A ControlNet file as a build source: its content key, its weights in our model, its export.

The file is read afresh for every use (never taken from sd-webui-controlnet's model in memory,
which it may have cast or moved) and checked unchanged by size and modification time, as a
checkpoint is (trt_core/unet_source.py). `ControlNetFile` has the attributes the UNet pipeline's
`ensure_onnx` and `reference_unet` use of a UNet source, so the export is made once and reused
the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sd_unet_trt.models.controlnet import (ControlNetConfig, ControlNetModel, UnsupportedControlNet,
                                          config_from_state_dict, load_state_dict)
from sd_unet_trt.trt_core.checkpoint_file import CheckpointError, FileStamp, _load_pickled
from sd_unet_trt.trt_core.controlnet.family import ControlNetFamily
from sd_unet_trt.trt_core.export import ExportResult
from sd_unet_trt.trt_core.file_digest import digest_of
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.progress import CancelToken, ProgressFn, no_progress


def controlnet_file_sha256(path: Path | str) -> str:
    """The file's sha256: the key of its engines (remembered per path, size and modification time)."""
    return digest_of(Path(path))


def read_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """Every tensor of a .safetensors file or a weights-only pickle (.pth, .ckpt, .pt), as stored."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no ControlNet file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path.name} is not a readable safetensors file ({e})") from None
    return _load_pickled(path)


def read_shapes(path: Path | str) -> dict[str, torch.Tensor]:
    """The file's tensors as meta tensors of their stored shapes (a .safetensors header alone: no
    weight is read), enough to tell its architecture."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {k: torch.empty(v.shape, device="meta") for k, v in read_tensors(path).items()}
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name} is not a readable safetensors file ({e})") from None


def load_controlnet(path: Path | str, dtype: torch.dtype | None = None,
                    device: torch.device | str = "cpu") -> tuple[ControlNetModel, ControlNetConfig]:
    """Our ControlNet holding the file's weights, and its architecture read off them;
    UnsupportedControlNet (one line) for a file that is no ControlNet we build."""
    path = Path(path)
    tensors = read_tensors(path)
    config = config_from_state_dict(tensors, path.name)
    return load_state_dict(config, tensors, dtype, device, path.name), config


@dataclass(frozen=True)
class ControlNetFile:
    """A ControlNet file, identified by its sha256 and checked unchanged whenever it is read."""
    path: Path
    checkpoint: CheckpointId  # the file's sha256 and name (the manifest's key for its engines)
    family: ControlNetFamily
    stamp: FileStamp

    @classmethod
    def open(cls, path: Path | str) -> "ControlNetFile":
        path = Path(path)
        stamp = FileStamp.of(path) if path.is_file() else None
        if stamp is None:
            raise CheckpointError(f"no ControlNet file at {path}")
        family = ControlNetFamily(config_from_state_dict(read_shapes(path), path.name))
        source = cls(path, CheckpointId.of(controlnet_file_sha256(path), path.stem), family, stamp)
        source.require_unchanged()
        return source

    def require_unchanged(self) -> None:
        if FileStamp.of(self.path) != self.stamp:
            raise CheckpointError(f"{self.path.name} changed on disk since it was hashed; load it again and retry")

    def parameters(self) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in ControlNetModel(self.family.config).parameters())

    def export(self, out_dir: Path, weights: str, device: torch.device | str | None = None,
               progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> ExportResult:
        """In a child process, as a checkpoint's UNet (trt_core/export_process.py: the export tools'
        libraries stay out of the WebUI's process)."""
        from sd_unet_trt.trt_core.export_process import run_export_child

        self.require_unchanged()
        run_export_child(["export-controlnet", str(self.path), "--out", str(out_dir), "--weights", weights,
                          "--sha256", self.checkpoint.sha256, "--expect-stamp",
                          f"{self.stamp.size}:{self.stamp.mtime_ns}", "--device", str(torch.device(device or "cpu")),
                          "--progress-lines"], self.path, out_dir, progress, cancel)
        return ExportResult.read(Path(out_dir), self.family, weights)

    def load(self, dtype: torch.dtype, device: torch.device | str) -> ControlNetModel:
        self.require_unchanged()
        model, config = load_controlnet(self.path, dtype, device)
        self.require_unchanged()
        if config != self.family.config:
            raise UnsupportedControlNet(f"{self.path.name} changed its architecture since it was opened")
        return model


__all__ = ["ControlNetFile", "controlnet_file_sha256", "load_controlnet", "read_tensors", "UnsupportedControlNet"]
