"""Pytest fixtures for the TensorRT tests: the double installed as `tensorrt` (10.16 unless a test
asks for another flavor), a backend that believes it has an 8.9 GPU with 12 GB and sees only the
double, and the tiny UNet's ONNX (exported once per session)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from sd_unet_trt.models.families import TINY
from sd_unet_trt.models.unet import seeded_unet
from sd_unet_trt.trt_core import backends
from sd_unet_trt.trt_core.backends.base import BuildRequest
from sd_unet_trt.trt_core.backends.tensorrt import TensorRTBackend
from sd_unet_trt.trt_core.backends.tensorrt import library as libraries
from sd_unet_trt.trt_core.backends.tensorrt import plan_file
from sd_unet_trt.trt_core.backends.tensorrt.hardware import GIB, GpuInfo
from sd_unet_trt.trt_core.export import export_onnx
from sd_unet_trt.trt_core.profiles import Profile, Range
from tests.trt_double import fake_tensorrt

ADA_12GB = GpuInfo(True, (8, 9), 10 * GIB, 12 * GIB, "NVIDIA GeForce RTX 4070")
TINY_PROFILE = Profile(Range(1, 1, 2), Range(64, 64, 128), Range(64, 64, 128), Range(75, 75, 150))


def play(flavor: str, device: str | None = "sm_89") -> None:
    fake_tensorrt._set_flavor(flavor, device)
    fake_tensorrt._reset()


@pytest.fixture
def fake_trt(monkeypatch):
    play("10")
    monkeypatch.setitem(sys.modules, "tensorrt", fake_tensorrt)
    yield fake_tensorrt
    play("10")


def double_importer(name: str) -> libraries.Library | None:
    """The double, as whichever library its flavor plays; no other library is seen."""
    return libraries.Library(fake_tensorrt, name) if name == fake_tensorrt._state.State.flavor.library else None


def backend_on(gpu: GpuInfo, **kwargs) -> TensorRTBackend:
    kwargs.setdefault("importer", double_importer)
    return TensorRTBackend(gpu_probe=lambda device: gpu, **kwargs)


@pytest.fixture
def backend(fake_trt) -> TensorRTBackend:
    return backend_on(ADA_12GB)


class RegisteredTensorRT(TensorRTBackend):
    """TensorRTBackend as the process's backend registry makes it (from its name and options alone),
    seeing the double and an Ada GPU."""

    def __init__(self, **options):
        super().__init__(gpu_probe=lambda device: ADA_12GB, importer=double_importer, **options)


@pytest.fixture
def registered_double(fake_trt, monkeypatch):
    """The registry's "tensorrt" is the double, with no instance made before this test."""
    monkeypatch.setitem(backends.REGISTRY, "tensorrt", f"{__name__}:{RegisteredTensorRT.__name__}")
    monkeypatch.setattr(backends, "_instances", {})


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
    kwargs.setdefault("precision", "fp32")  # the tiny ONNX holds fp32: strongly typed engines keep it
    return BuildRequest(onnx_path=onnx_path, family=TINY, profile=profile, device="cuda", **kwargs)


def rtx_engine_file(path: Path, onnx_path: Path, targets: list[str], refittable: bool = False,
                    profile: Profile = TINY_PROFILE) -> Path:
    """An engine file as TensorRT for RTX would write it, made with the double's own builder (this
    process's Polygraphy serves full TensorRT; real TensorRT for RTX builds run in a child process)."""
    trt = fake_tensorrt
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(onnx_path))
    config = builder.create_builder_config()
    shapes = profile.input_shapes(TINY)
    trt_profile = builder.create_optimization_profile()
    for name, triple in shapes.items():
        trt_profile.set_shape(name, *triple)
    config.add_optimization_profile(trt_profile)
    if refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    config.num_compute_capabilities = len(targets)
    for i, target in enumerate(targets):
        assert config.set_compute_capability(getattr(trt.ComputeCapability, "SM" + target[3:]), i)
    plan = builder.build_serialized_network(network, config)
    assert plan is not None
    header = plan_file.PlanHeader("tensorrt_rtx", trt.__version__, plan_file.PORTABLE, "fp32", refittable,
                                  {n: [list(s) for s in t] for n, t in shapes.items()}, list(targets))
    path.write_bytes(b"".join(bytes(p) for p in plan_file.pack(header, plan)))
    return path
