"""Shared fixtures: tiny UNets with the real block structure, exported once per test session."""
import warnings

import onnxruntime as ort
import pytest
import torch

from sd_unet_trt.models import unet as arch
from sd_unet_trt.models.families import family_named
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.export import export_onnx

warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
ort.set_default_logger_severity(3)  # its optimizer's notes about our graphs are not test output
# Two OpenMP threads on two shared cores can slow a tiny UNet call 40x when anything else runs.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_unet():
    return arch.seeded_unet(arch.TINY, seed=1)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """family name -> (UNet, fp32 ONNX path), exported lazily and once."""
    cache = {}
    configs = {"tiny": arch.TINY, "tiny-inpaint": family_named("tiny-inpaint").unet_config(), "tiny-xl": arch.TINY_XL}

    def get(name):
        if name not in cache:
            unet = arch.seeded_unet(configs[name], seed=2)
            result = export_onnx(unet, family_named(name), tmp_path_factory.mktemp(name) / "onnx", weights="fp32")
            cache[name] = unet, result.onnx_path
        return cache[name]
    return get


@pytest.fixture(scope="session")
def ort_engine(exported):
    """An ONNX Runtime engine on the CPU for a family and profile (the ONNX serves any profile)."""
    def make(family_name, profile, name=None):
        unet, onnx_path = exported(family_name)
        engine = OnnxRuntimeBackend().load(onnx_path, name or f"{family_name} {profile.label()}",
                                           family_named(family_name), profile, device="cpu")
        return unet, engine
    return make
