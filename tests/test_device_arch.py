"""Every backend names a CUDA GPU the same way (base.arch_tag): the manifest compares an engine's
recorded arch with `device_arch` here, so one spelling apart would call every engine stale."""
from __future__ import annotations

import pytest
import torch

from sd_unet_trt.trt_core.backends.base import arch_tag
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.backends.tensorrt import TensorRTBackend
from sd_unet_trt.trt_core.backends.tensorrt.hardware import GpuInfo
from sd_unet_trt.trt_core.backends.torch_compiled import TorchCompiledBackend


@pytest.mark.parametrize("capability", [(8, 9), (12, 0)])
def test_the_backends_tag_a_gpu_alike(monkeypatch, capability):
    # no GPU on this machine: torch's answer for one is the one thing stood in for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(OnnxRuntimeBackend, "providers", lambda self, device: ["CUDAExecutionProvider"])
    tensorrt = TensorRTBackend(gpu_probe=lambda device: GpuInfo(True, capability, 2**33, 2**34, "GPU"))
    tags = {TorchCompiledBackend().device_arch("cuda"), OnnxRuntimeBackend().device_arch("cuda"),
            tensorrt.device_arch("cuda")}
    assert tags == {arch_tag(capability)} == {f"sm_{capability[0]}{capability[1]}"}
