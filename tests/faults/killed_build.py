"""A build of the tiny model (ONNX Runtime backend, fp32, CPU) in WORKSPACE that kills itself with
SIGKILL at PHASE, as `kill -9` or the OOM killer would:

    python -m tests.faults.killed_build PHASE WORKSPACE

export        as the export's temp folder is about to be renamed into Unet-onnx/
engine-write  halfway through writing the engine file
rename        right after the engine file was moved to its final name
registration  as manifest.json is about to be written
none          no kill: the build runs to the end
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from sd_unet_trt.trt_core import manifest as manifest_module
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.workspace import Workspace
from sd_unet_trt.ui.standalone import tiny_model

PROFILE = Profile.static(1, 64, 64)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(phase: str) -> None:
    if phase in ("export", "rename"):
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            src, dst = Path(src), Path(dst)
            if phase == "export" and dst.parent.name == "Unet-onnx":
                die()
            real_replace(src, dst, *args, **kwargs)
            if phase == "rename" and dst.name.endswith(OnnxRuntimeBackend.file_suffix):
                die()
        os.replace = replace

    if phase == "engine-write":
        def build(self, request, out_path, progress=None, cancel=None):
            data = Path(request.onnx_path).read_bytes()
            Path(out_path).write_bytes(data[:len(data) // 2])
            die()
        OnnxRuntimeBackend.build = build

    if phase == "registration":
        real_write = manifest_module.atomic_write_text

        def write(path, text):
            if Path(path).name == manifest_module.INDEX_NAME:
                die()
            real_write(path, text)
        manifest_module.atomic_write_text = write


def main(phase: str, root: Path) -> None:
    arm(phase)
    entry = build_engine(tiny_model(), PROFILE, OnnxRuntimeBackend(), Workspace(root), precision="fp32", device="cpu")
    print(entry.id)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
