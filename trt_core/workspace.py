"""The workspace: the folder that holds `Unet-onnx/` (exports) and `Unet-trt/` (engines, the
manifest, weights records): the WebUI's models folder, or any folder standalone. Its own module, so
what only reads or lists engines does not import the build pipeline."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.atomic import remove_stale_temps
from sd_unet_trt.trt_core.manifest import CheckpointId, Manifest, ManifestError
from sd_unet_trt.trt_core.weights import WeightsRecord

ONNX_DIR, ENGINE_DIR = "Unet-onnx", "Unet-trt"


@dataclass(frozen=True)
class Workspace:
    """Where artifacts live: the WebUI's models folder, or any folder standalone."""
    root: Path

    @property
    def onnx_dir(self) -> Path:
        return self.root / ONNX_DIR

    @property
    def engine_dir(self) -> Path:
        return self.root / ENGINE_DIR

    def onnx_folder(self, checkpoint: CheckpointId, family: ModelFamily, weights: str) -> Path:
        return self.onnx_dir / f"{checkpoint.short_hash}-{family.name}-{weights}"

    def manifest(self) -> Manifest:
        return Manifest(self.engine_dir)

    def writable(self) -> bool:
        """Whether this process may change the workspace. A shared engine folder, a read-only mount or
        another user's files are read as they are: listing and verifying take no write lock."""
        lock = self.engine_dir / ".manifest.lock"
        return (all(os.access(d, os.W_OK) for d in (self.onnx_dir, self.engine_dir) if d.is_dir())
                and (not lock.exists() or os.access(lock, os.W_OK)))

    def sweep(self) -> list[Path]:
        """Remove what killed builds left (temp files and folders of processes that are gone) in both
        folders, and register engines a killed build left with only their sidecar. Nothing where
        this process cannot write: what is there is then read as it is."""
        if not self.writable():
            return []
        swept = remove_stale_temps(self.onnx_dir) + remove_stale_temps(self.engine_dir)
        if self.engine_dir.is_dir():
            try:
                self.manifest().prune()
            except ManifestError:  # a broken index is for `recover`, which says so; temps are gone anyway
                pass
        return swept

    def weights_record_path(self, weights_digest: str) -> Path:
        """The weights record of engines whose identity carries this digest."""
        return self.manifest().weights_record_path(weights_digest)

    def weights_record(self, weights_digest: str) -> WeightsRecord:
        """The fingerprints of the weights engines with this digest hold; ValueError when missing."""
        record = WeightsRecord.load(self.weights_record_path(weights_digest))
        if record.digest != weights_digest:
            raise ValueError(f"{self.weights_record_path(weights_digest).name} does not match its engines")
        return record
