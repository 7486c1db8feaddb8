"""API conformance: the double is the real API, flavor by flavor.

- TensorRT 10.0, 10.16 and 11.4: every name the double defines for that version exists in that
  version's real bindings wheel (its compiled module's string table; the wheels, about 1.1-1.3 MB,
  are downloaded once with pip into TRT_BINDINGS_CACHE, default ~/.cache/sd-unet-trt/bindings).
- TensorRT for RTX 1.x: the real `tensorrt_rtx` module imports here (its builder runs without a
  GPU), so every class, member, enum value and method signature of the double is compared with it.
- The backend uses no name the double does not model, none TensorRT 10 removed or 11 dropped, and
  what a build and a run touch exists in every version.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

from sd_unet_trt.models.families import TINY
from tests.trt_double import fake_tensorrt
from tests.trt_double.bindings_names import WheelNames, attribute_names, bindings_wheel, double_surface, trt_chains
from tests.trt_double.fixtures import (ADA_12GB, backend_on, fake_trt, play, rtx_engine_file, tiny_onnx,  # noqa: F401
                                       tiny_request, tiny_unet)

WHEELS = {"10.0": "10.0.1", "10": "10.16.1.11", "11": "11.4.0.106"}  # flavor -> real bindings wheel
BACKEND_DIR = Path(__file__).resolve().parents[1] / "trt_core" / "backends" / "tensorrt"
# The binding-index API and other calls TensorRT 10 removed (TensorRT 8.x/9.x names).
REMOVED_IN_10 = {"num_bindings", "get_binding_index", "get_binding_name", "binding_is_input", "get_binding_shape",
                 "get_binding_dtype", "get_binding_vectorized_dim", "get_profile_shape", "set_binding_shape",
                 "execute_async_v2", "max_workspace_size", "build_engine"}
# Deprecated in 10 and gone in 11 (or in TensorRT for RTX): the backend must not need them.
GONE_IN_11 = {"platform_has_fast_fp16", "EXPLICIT_BATCH", "FP16", "BF16", "INT8", "int8_calibrator"}


@pytest.fixture(scope="module", params=list(WHEELS))
def flavored_wheel(request):
    fake_tensorrt._set_flavor(request.param)
    yield request.param, WheelNames(bindings_wheel(WHEELS[request.param]))
    fake_tensorrt._set_flavor("10")


def flavor_surface() -> set[str]:
    return double_surface(fake_tensorrt) - fake_tensorrt._state.State.flavor.absent


def backend_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(BACKEND_DIR.glob("*.py"))}


def test_every_name_the_double_defines_for_a_version_exists_in_its_wheel(flavored_wheel):
    flavor, wheel = flavored_wheel
    fake_tensorrt._set_flavor(flavor)
    missing = wheel.missing(flavor_surface())
    assert not missing, f"{wheel.wheel.name} lacks {sorted(missing)}: the double models an API that does not exist"


def test_the_check_detects_removed_names(flavored_wheel):
    """The check can fail: every name TensorRT 10 removed is reported missing, in every version."""
    _, wheel = flavored_wheel
    assert wheel.missing(REMOVED_IN_10) == REMOVED_IN_10
    assert "set_input_shape" in wheel and "execute_async_v3" in wheel and "set_tensor_address" in wheel


def test_what_11_dropped_is_dropped_by_the_doubles_11():
    wheel = WheelNames(bindings_wheel(WHEELS["11"]))
    assert "device_memory_size" not in wheel and "device_memory_size_v2" in wheel and "precision_is_set" not in wheel
    assert {"device_memory_size", "precision_is_set"} <= fake_tensorrt._state.FLAVORS["11"].absent


def test_every_trt_name_the_backend_uses_is_modelled_by_the_double():
    unresolved = []
    fake_tensorrt._set_flavor("rtx")  # the flavor with every module-level name (RTX's enums)
    try:
        for file, source in backend_sources().items():
            for chain in trt_chains(source):
                target = fake_tensorrt
                for part in chain:
                    if not hasattr(target, part):
                        unresolved.append(f"{file}: trt.{'.'.join(chain)}")
                        break
                    target = getattr(target, part)
    finally:
        fake_tensorrt._set_flavor("10")
    assert not unresolved, f"not in the double (so not checked against TensorRT): {unresolved}"


def test_no_removed_or_dropped_name_is_used_anywhere():
    for file, source in backend_sources().items():
        used = attribute_names(source) | {c[-1] for c in trt_chains(source)}
        assert not used & (REMOVED_IN_10 | GONE_IN_11), f"{file} uses {sorted(used & (REMOVED_IN_10 | GONE_IN_11))}"
    assert not double_surface(fake_tensorrt) & REMOVED_IN_10


@pytest.mark.parametrize("flavor", list(WHEELS))
def test_names_touched_during_a_build_and_run_exist_in_that_version(fake_trt, tiny_onnx, tmp_path, flavor):
    wheel = WheelNames(bindings_wheel(WHEELS[flavor]))
    play(flavor)
    fake_tensorrt._state.State.used_names.clear()
    backend = backend_on(ADA_12GB)
    path = tmp_path / "tiny.trt"
    backend.build(tiny_request(tiny_onnx), path)
    engine = backend.load(path, "tiny", TINY, tiny_request(tiny_onnx).profile, device="cpu")
    engine(torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 77, 768))
    engine.set_weights({"out.2.bias": torch.zeros(4)})
    used = set(fake_tensorrt._used_names)
    memory = {"10.0": "device_memory"}.get(flavor, "set_device_memory")
    assert {"set_input_shape", "set_tensor_address", "execute_async_v3", memory, "set_named_weights",
            "build_serialized_network", "get_flag"} <= used
    assert not wheel.missing(used), f"used but absent from {wheel.wheel.name}: {sorted(wheel.missing(used))}"


# ---- TensorRT for RTX: the real module -------------------------------------------------------------

@pytest.fixture(scope="module")
def real_rtx():
    """The bindings module: the `tensorrt_rtx` wrapper (a source package) only re-exports it."""
    return pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT for RTX is not installed (pip install -e '.[test]')")


@pytest.fixture
def as_rtx():
    fake_tensorrt._set_flavor("rtx")
    yield fake_tensorrt
    fake_tensorrt._set_flavor("10")


def pybind_parameters(function) -> list[list[str]]:
    """The parameter names (without self) of each overload pybind11 reports in the docstring."""
    doc = function.__doc__ or ""
    name = function.__name__
    found = []
    for match in re.finditer(rf"(?m)^(?:\d+\. )?{re.escape(name)}\((.*)\) ->", doc):
        params = [p.split(":")[0].strip() for p in re.split(r",\s*(?![^\[]*\])", match.group(1)) if p.strip()]
        found.append([p for p in params if p not in ("self", "*args", "**kwargs")])
    return found


def double_classes(module) -> dict[str, type]:
    return {name: value for name, value in vars(module).items()
            if inspect.isclass(value) and not name.startswith("_") and value.__module__.startswith(module.__name__)}


def test_the_rtx_double_matches_the_real_module_class_by_class(as_rtx, real_rtx):
    problems = []
    absent = fake_tensorrt._state.State.flavor.absent
    for name, cls in double_classes(as_rtx).items():
        real = getattr(real_rtx, name, None)
        if real is None:
            problems.append(f"{name}: not in tensorrt_rtx")
            continue
        if hasattr(cls, "__members__"):  # an enum: names and values
            for member, value in cls.__members__.items():
                if member not in real.__members__ or int(real.__members__[member]) != int(value):
                    problems.append(f"{name}.{member} = {int(value)}: tensorrt_rtx has "
                                    f"{int(real.__members__[member]) if member in real.__members__ else 'none'}")
            continue
        for attr, value in vars(cls).items():
            if attr.startswith("_") or attr in absent or inspect.isclass(value):
                continue
            real_attr = inspect.getattr_static(real, attr, None)
            if real_attr is None:
                problems.append(f"{name}.{attr}: not in tensorrt_rtx")
            elif isinstance(value, property):
                if not isinstance(real_attr, property):
                    problems.append(f"{name}.{attr}: a property here, not in tensorrt_rtx")
                elif value.fset is not None and real_attr.fset is None:
                    problems.append(f"{name}.{attr}: settable here, read-only in tensorrt_rtx")
            elif callable(value):
                ours = [p for p in inspect.signature(value).parameters if p != "self"]
                theirs = pybind_parameters(getattr(real, attr))
                if theirs and ours not in theirs:
                    problems.append(f"{name}.{attr}({', '.join(ours)}): tensorrt_rtx takes {theirs}")
    assert not problems, "\n".join(problems)


def test_the_rtx_check_can_fail(real_rtx):
    assert pybind_parameters(real_rtx.IBuilderConfig.set_compute_capability) == [["compute_capability", "index"]]
    assert pybind_parameters(real_rtx.ICudaEngine.create_execution_context) == [["strategy"], ["runtime_config"]]
    assert not hasattr(real_rtx.ICudaEngine, "device_memory_size") and not hasattr(real_rtx.BuilderFlag, "FP16")


def test_the_rtx_runtime_path_touches_only_real_names(fake_trt, real_rtx, tiny_onnx, tmp_path):
    play("rtx")
    path = rtx_engine_file(tmp_path / "tiny.trt", tiny_onnx, ["sm_80", "sm_86", "sm_89", "sm_120", "sm_121"])
    fake_tensorrt._state.State.used_names.clear()
    backend = backend_on(ADA_12GB)
    assert backend.file_problem(path) == ""
    engine = backend.load(path, "tiny", TINY, tiny_request(tiny_onnx).profile, device="cpu")
    engine(torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 77, 768))
    engine.close()
    used = set(fake_tensorrt._used_names)
    assert {"create_runtime_config", "set_runtime_cache", "cuda_graph_strategy", "get_engine_validity",
            "set_device_memory", "device_memory_size_v2"} <= used
    missing = sorted(n for n in used if not any(hasattr(getattr(real_rtx, c), n) for c in dir(real_rtx)
                                                 if inspect.isclass(getattr(real_rtx, c))))
    assert not missing, f"used but absent from tensorrt_rtx: {missing}"
