"""Checkpoint identity by content: engines follow the weights, not the file name."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import torch

from sd_unet_trt.trt_core.file_digest import file_sha256
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.progress import ProgressFn, no_progress


def sha256_state_dict(state: Mapping[str, torch.Tensor]) -> str:
    """A content hash of in-memory weights (names, dtypes, shapes and values)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def checkpoint_of_file(path: Path | str, progress: ProgressFn = no_progress) -> CheckpointId:
    return CheckpointId.of(file_sha256(path, progress), Path(path).stem)


def checkpoint_of_module(module: torch.nn.Module, name: str) -> CheckpointId:
    return CheckpointId.of(sha256_state_dict(module.state_dict()), name)
