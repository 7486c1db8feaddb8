"""API conformance: every TensorRT name our backend and our double use exists in the real
TensorRT 10 bindings (oldest and newest 10.x wheels), and none of the names TensorRT 10 removed
is used. The wheels (about 1.1 and 1.3 MB) are downloaded once with pip into the cache folder
(TRT_BINDINGS_CACHE, default ~/.cache/sd-unet-trt/bindings)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sd_unet_trt.models.families import TINY
from tests.trt_double import fake_tensorrt
from tests.trt_double.bindings_names import WheelNames, attribute_names, bindings_wheel, double_surface, trt_chains
from tests.trt_double.fixtures import backend, fake_trt, tiny_onnx, tiny_request, tiny_unet  # noqa: F401

CLAIMED = ("10.0.1", "10.16.1.11")  # the first and the newest TensorRT 10 bindings on PyPI
BACKEND_DIR = Path(__file__).resolve().parents[1] / "trt_core" / "backends" / "tensorrt"
# The binding-index API and other calls TensorRT 10 removed (TensorRT 8.x/9.x names).
REMOVED_IN_10 = {"num_bindings", "get_binding_index", "get_binding_name", "binding_is_input", "get_binding_shape",
                 "get_binding_dtype", "get_binding_vectorized_dim", "get_profile_shape", "set_binding_shape",
                 "execute_async_v2", "max_workspace_size", "build_engine"}
# Deprecated in 10 and gone in 11: we do not use them either.
DEPRECATED_IN_10 = {"platform_has_fast_fp16", "EXPLICIT_BATCH"}


@pytest.fixture(scope="module", params=CLAIMED)
def wheel(request) -> WheelNames:
    return WheelNames(bindings_wheel(request.param))


def backend_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(BACKEND_DIR.glob("*.py"))}


def test_every_name_the_double_defines_exists_in_tensorrt(wheel):
    missing = wheel.missing(double_surface(fake_tensorrt))
    assert not missing, f"{wheel.wheel.name} lacks {sorted(missing)}: the double models an API that does not exist"


def test_every_trt_name_the_backend_uses_is_modelled_by_the_double():
    unresolved = []
    for file, source in backend_sources().items():
        for chain in trt_chains(source):
            target = fake_tensorrt
            for part in chain:
                if not hasattr(target, part):
                    unresolved.append(f"{file}: trt.{'.'.join(chain)}")
                    break
                target = getattr(target, part)
    assert not unresolved, f"not in the double (so not checked against TensorRT): {unresolved}"


def test_no_removed_or_deprecated_name_is_used_anywhere():
    for file, source in backend_sources().items():
        used = attribute_names(source) | {c[-1] for c in trt_chains(source)}
        assert not used & (REMOVED_IN_10 | DEPRECATED_IN_10), f"{file} uses {sorted(used & (REMOVED_IN_10 | DEPRECATED_IN_10))}"
    assert not double_surface(fake_tensorrt) & REMOVED_IN_10


def test_the_check_detects_removed_names(wheel):
    """The check can fail: every name TensorRT 10 removed is reported missing."""
    assert wheel.missing(REMOVED_IN_10) == REMOVED_IN_10
    assert "set_input_shape" in wheel and "execute_async_v3" in wheel and "set_tensor_address" in wheel


def test_names_touched_during_a_real_build_and_run_exist_in_tensorrt(wheel, backend, tiny_onnx, tmp_path):
    fake_tensorrt._used_names.clear()
    path = tmp_path / "tiny.trt"
    backend.build(tiny_request(tiny_onnx), path)
    engine = backend.load(path, "tiny", TINY, tiny_request(tiny_onnx).profile, device="cpu")
    engine(torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 77, 768))
    engine.set_weights({"out.2.bias": torch.zeros(4)})
    used = set(fake_tensorrt._used_names)
    assert {"set_input_shape", "set_tensor_address", "execute_async_v3", "device_memory",
            "set_named_weights", "build_serialized_network"} <= used
    assert not wheel.missing(used), f"used but absent from {wheel.wheel.name}: {sorted(wheel.missing(used))}"
