"""Pytest fixtures for the TensorRT tests: the double installed as `tensorrt`, a backend that
believes it has an 8.9 GPU with 12 GB, and the tiny UNet's ONNX (exported once per session)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sd_unet_trt.models.families import TINY
from sd_unet_trt.models.unet import seeded_unet
from tests.trt_double import fake_tensorrt
from sd_unet_trt.trt_core.backends.base import BuildRequest
from sd_unet_trt.trt_core.backends.tensorrt import TensorRTBackend
from sd_unet_trt.trt_core.backends.tensorrt.hardware import GIB, GpuInfo
from sd_unet_trt.trt_core.export import export_onnx
from sd_unet_trt.trt_core.profiles import Profile, Range

ADA_12GB = GpuInfo(True, (8, 9), 10 * GIB, 12 * GIB)
TINY_PROFILE = Profile(Range(1, 1, 2), Range(64, 64, 128), Range(64, 64, 128), Range(75, 75, 150))


@pytest.fixture
def fake_trt(monkeypatch):
    fake_tensorrt._reset()
    monkeypatch.setattr(fake_tensorrt, "__version__", "10.16.1.11")
    monkeypatch.setattr(fake_tensorrt, "_DEVICE", "sm_89")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    return fake_tensorrt


def backend_on(gpu: GpuInfo, **kwargs) -> TensorRTBackend:
    return TensorRTBackend(gpu_probe=lambda device: gpu, **kwargs)


@pytest.fixture
def backend(fake_trt) -> TensorRTBackend:
    return backend_on(ADA_12GB)


@pytest.fixture(scope="session")
def tiny_unet():
    return seeded_unet(TINY.unet_config(), seed=3).eval()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory, tiny_unet) -> Path:
    folder = tmp_path_factory.getbasetemp() / "tiny-onnx-fp32"
    if not (folder / "unet.onnx").is_file():
        export_onnx(tiny_unet, TINY, folder, weights="fp32")
    return folder / "unet.onnx"


def tiny_request(onnx_path: Path, profile: Profile = TINY_PROFILE, **kwargs) -> BuildRequest:
    return BuildRequest(onnx_path=onnx_path, family=TINY, profile=profile, device="cuda", **kwargs)
