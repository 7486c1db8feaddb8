"""Where engines live inside the WebUI: its models folder (Unet-onnx/, Unet-trt/)."""
from __future__ import annotations

from pathlib import Path

from modules import paths_internal

from sd_unet_trt.trt_core.workspace import Workspace


def workspace() -> Workspace:
    return Workspace(Path(paths_internal.models_path))
