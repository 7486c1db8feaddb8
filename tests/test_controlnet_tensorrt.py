"""A ControlNet's TensorRT engine (issue 23) against the strict TensorRT double: built, checked and
registered by the product's path, then served through `controlnet_engines`, residual for residual
as the PyTorch ControlNet computes them (the double runs the real numbers of the ONNX)."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from sd_unet_trt.models import controlnet as cn
from sd_unet_trt.trt_core.backends import get_backend
from sd_unet_trt.trt_core.catalog import catalog
from sd_unet_trt.trt_core.controlnet import build_controlnet_engine, controlnet_engines, controlnet_file_sha256
from sd_unet_trt.trt_core.workspace import Workspace
from tests.test_controlnet_engines import assert_close, call
from tests.trt_double.fixtures import TINY_PROFILE, fake_trt, registered_double  # noqa: F401


def test_a_tensorrt_controlnet_engine_gives_every_residual_as_pytorch(registered_double, tmp_path):
    model = cn.seeded_controlnet(cn.TINY_XL, seed=6)  # SDXL blocks: y goes in too
    path = tmp_path / "tiny_xl_control.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    workspace = Workspace(tmp_path / "ws")
    entry = build_controlnet_engine(workspace, path, TINY_PROFILE, get_backend("tensorrt"), "fp32", device="cpu")
    assert entry.family == "controlnet-model-sdxl" and entry.accuracy["max_rel"] <= entry.accuracy["tolerance"]
    [item] = catalog(workspace, "cpu")
    assert item.status.ready, item.status.reason
    engines = controlnet_engines(workspace, controlnet_file_sha256(path), device="cpu")
    try:
        for rows, latent in ((2, (8, 12)), (6, (16, 8))):  # 6 rows: two runs of 3, joined
            args = call(cn.TINY_XL, rows, *latent)
            out = engines.run(*args)
            with torch.no_grad():
                assert_close(out, model(*args))
    finally:
        engines.close()
