"""The TensorRT builder's decisions (pure functions), the choice of library, and its use of the API
through Polygraphy against the double as TensorRT 10.0, 10.16 and 11.4. (Real TensorRT for RTX
builds: tests/test_tensorrt_rtx_builds.py.)"""
from __future__ import annotations

import sys
import threading

import pytest

from sd_unet_trt.trt_core.backends.base import arch_tag
from sd_unet_trt.trt_core.backends.tensorrt import TensorRTBackend
from sd_unet_trt.trt_core.backends.tensorrt import library as libraries
from sd_unet_trt.trt_core.backends.tensorrt.backend import portable_targets
from sd_unet_trt.trt_core.backends.tensorrt.builder import EngineBuildError
from sd_unet_trt.trt_core.backends.tensorrt.hardware import GIB, MIB, GpuInfo, workspace_limit
from sd_unet_trt.trt_core.backends.tensorrt.plan_file import read_header
from sd_unet_trt.trt_core.backends.tensorrt.progress import PhaseTracker
from sd_unet_trt.trt_core.backends.tensorrt.timing_cache import cache_path
from sd_unet_trt.trt_core.profiles import Profile, ProfileError, Range
from sd_unet_trt.trt_core.progress import BuildCancelled, CancelToken
from tests.trt_double.fixtures import (ADA_12GB, backend, backend_on, fake_trt, play, tiny_onnx,  # noqa: F401
                                       tiny_request, tiny_unet)

HOPPER = GpuInfo(True, (9, 0), 70 * GIB, 80 * GIB, "NVIDIA H100")


def plan_of(path):
    data = path.read_bytes()
    return data[read_header(data)[1]:]


# ---- pure decisions ------------------------------------------------------------------------

def test_workspace_leaves_room_for_weights_and_a_reserve():
    sdxl_fp16 = 5 * GIB
    assert workspace_limit(7 * GIB, 8 * GIB, sdxl_fp16) == 1 * GIB  # 7 - 5 - 1 (reserve)
    assert workspace_limit(11 * GIB, 12 * GIB, sdxl_fp16) == (11 * GIB - sdxl_fp16 - 12 * GIB // 10) // MIB * MIB
    assert workspace_limit(80 * GIB, 80 * GIB, sdxl_fp16) == (80 * GIB - sdxl_fp16 - 8 * GIB) // MIB * MIB
    assert workspace_limit(5 * GIB, 8 * GIB, sdxl_fp16) == 256 * MIB  # never below the floor
    assert workspace_limit(11 * GIB, 12 * GIB, 0) % MIB == 0
    with pytest.raises(ValueError):
        workspace_limit(-1, 8 * GIB, 0)
    assert arch_tag((8, 6)) == "sm_86" and arch_tag((12, 0)) == "sm_120"


def test_pip_requirements_are_the_wheels_for_torchs_cuda_major():
    assert libraries.pip_requirements("tensorrt_rtx", "12.8") == ["tensorrt-rtx-cu12-bindings>=1.0,<2",
                                                                  "tensorrt-rtx-cu12-libs>=1.0,<2", "polygraphy>=0.50"]
    assert libraries.pip_requirements("tensorrt", "13.0") == ["tensorrt-cu13-bindings>=10.0,<12",
                                                              "tensorrt-cu13-libs>=10.0,<12", "polygraphy>=0.50"]
    assert libraries.pip_requirements("tensorrt", None) == [] == libraries.pip_requirements("tensorrt_rtx", "11.8")


def test_phase_tracker_nests_and_never_goes_back():
    t = PhaseTracker()
    t.start("Building engine", None, 4)
    t.start("Timing", "Building engine", 2)
    t.step("Timing", 0)
    assert t.fraction() == pytest.approx(0.125)
    t.finish("Timing")
    t.step("Building engine", 0)
    assert t.fraction() == pytest.approx(0.25) and t.label() == "Building engine"
    t.finish("Building engine")
    t.start("Serializing", None, 10)
    assert t.fraction() == pytest.approx(0.25)  # a new top-level phase does not move the bar back


# ---- which library -----------------------------------------------------------------------------

def installed(**versions):
    """An importer that finds the libraries given as name=version (the double stands in for each)."""
    class Module:
        pass

    def importer(name):
        if name not in versions:
            return None
        module = Module()
        module.__version__ = versions[name]
        return libraries.Library(module, name)
    return importer


BOTH = installed(tensorrt="11.4.0.106", tensorrt_rtx="1.7.1.116")


def test_rtx_serves_geforce_and_rtx_cards_and_full_tensorrt_the_data_center():
    for capability in [(8, 0), (8, 6), (8, 9), (12, 0)]:
        assert libraries.choose_library(capability, importer=BOTH).library.name == "tensorrt_rtx"
    for capability in [(9, 0), (10, 0), (7, 5)]:  # Hopper, data-center Blackwell, Turing
        assert libraries.choose_library(capability, importer=BOTH).library.name == "tensorrt"
    assert libraries.choose_library(None, importer=BOTH).library.name == "tensorrt_rtx"  # builds without a GPU


def test_the_other_library_serves_when_the_preferred_one_is_missing_and_the_setting_overrides():
    only_full = installed(tensorrt="10.16.1.11")
    assert libraries.choose_library((8, 9), importer=only_full).library.label == "TensorRT 10.16.1.11"
    chosen = libraries.choose_library((8, 9), "tensorrt", importer=BOTH)
    assert chosen.library.name == "tensorrt" and not chosen.reason
    refused = libraries.choose_library((9, 0), "tensorrt_rtx", importer=BOTH)
    assert refused.library is None and "does not run on this GPU (compute capability 9.0)" in refused.reason
    with pytest.raises(ValueError, match="unknown TensorRT library"):
        libraries.set_preference("TensorRT 12")


def test_tensorrt_11_is_accepted_and_unsupported_versions_are_refused_with_a_reason():
    assert libraries.choose_library((9, 0), importer=installed(tensorrt="11.4.0.106")).library.major == 11
    refused = libraries.choose_library((9, 0), importer=installed(tensorrt="12.0.0"))
    assert refused.library is None and "supports TensorRT 10.x/11.x" in refused.reason
    assert "TensorRT for RTX is not installed (pip install" in refused.reason


def test_full_tensorrt_without_a_gpu_says_in_one_line_that_a_gpu_is_needed():
    chosen = libraries.choose_library(None, importer=installed(tensorrt="10.16.1.11"))
    assert chosen.library is None and "\n" not in chosen.reason
    assert "TensorRT 10.16.1.11 needs an NVIDIA GPU to build engines (TensorRT for RTX builds without one" in chosen.reason


def test_without_any_tensorrt_the_backend_says_how_to_install(monkeypatch):
    for module in ("tensorrt", "tensorrt_rtx", "tensorrt_rtx_bindings"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails
    backend = TensorRTBackend(gpu_probe=lambda device: ADA_12GB)
    assert not backend.availability().available and "pip install" in backend.availability().reason
    assert backend.version() == "not installed"


def test_rtx_builds_for_every_capability_it_runs_on(fake_trt):
    play("rtx")
    targets = portable_targets(libraries.Library(fake_trt, "tensorrt_rtx"))
    assert targets == ((8, 0), (8, 6), (8, 9), (12, 0), (12, 1))  # SM75 is buildable, its runtime refuses it


# ---- building through Polygraphy against the double --------------------------------------------

@pytest.mark.parametrize("flavor", ["10.0", "10", "11"])
def test_strongly_typed_build_with_refit_workspace_level_and_no_precision_flags(fake_trt, tiny_onnx, tmp_path, flavor):
    play(flavor)
    out = tmp_path / "e.trt"
    backend = backend_on(ADA_12GB)
    outcome = backend.build(tiny_request(tiny_onnx, options={"optimization_level": 4}), out)
    info = fake_trt._plan_info(plan_of(out))
    assert info["strongly_typed"] and info["flags"] == ["REFIT"] and info["level"] == 4
    assert info["workspace"] == outcome.details["workspace_bytes"] > 256 * MIB
    assert info["shapes"]["x"][0] == [[1, 4, 8, 8], [2, 4, 8, 8], [4, 4, 16, 16]]
    header = read_header(out.read_bytes())[0]
    assert (header.library, header.version, header.gpu_arch, header.precision, header.refittable) == (
        "tensorrt", fake_trt.__version__, "sm_89", "fp32", True)
    assert outcome.details["library"] == "tensorrt" and outcome.details["library_version"] == fake_trt.__version__
    assert backend.version() == f"tensorrt {fake_trt.__version__}"


def test_precision_is_the_exports_own(backend, tiny_onnx, tmp_path):
    with pytest.raises(EngineBuildError, match="a fp16 engine needs a fp16 export, this one computes in FLOAT"):
        backend.build(tiny_request(tiny_onnx, precision="fp16"), tmp_path / "x.trt")
    with pytest.raises(ValueError, match="precision from the export"):
        backend.build(tiny_request(tiny_onnx, precision="bf16"), tmp_path / "x.trt")
    assert backend.precision_problem("fp16") is None and "bf16" in backend.precision_problem("bf16")


def test_the_double_refuses_precision_flags_on_a_strongly_typed_network(fake_trt, tiny_onnx):
    """The rule the builder obeys is enforced, so a regression to BuilderFlag.FP16 would fail."""
    trt = fake_trt
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(network, logger).parse_from_file(str(tiny_onnx))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is None
    play("11")
    assert not hasattr(trt.BuilderFlag, "FP16")  # TensorRT 11 has no precision flags at all


def test_timing_cache_is_reused_across_builds_and_kept_per_gpu_and_version(backend, fake_trt, tiny_onnx, tmp_path):
    backend.build(tiny_request(tiny_onnx), tmp_path / "a.trt")
    cache = cache_path(tmp_path / "timing-cache", "sm_89", "10.16.1.11")
    assert cache.is_file() and fake_trt._stats.get("timing_cache_hits", 0) == 0
    backend.build(tiny_request(tiny_onnx), tmp_path / "b.trt")
    assert fake_trt._stats["timing_cache_hits"] == 4
    cache.write_bytes(b"not a timing cache")
    outcome = backend.build(tiny_request(tiny_onnx), tmp_path / "c.trt")
    assert (tmp_path / "c.trt").is_file() and outcome.details["notes"]


def test_timing_cache_lock_held_elsewhere_does_not_block_the_build(backend, tiny_onnx, tmp_path, monkeypatch):
    from filelock import FileLock

    from sd_unet_trt.trt_core.backends.tensorrt import timing_cache

    monkeypatch.setattr(timing_cache, "LOCK_TIMEOUT_S", 0.2)
    cache = cache_path(tmp_path / "timing-cache", "sm_89", "10.16.1.11")
    cache.parent.mkdir(parents=True)
    holder = FileLock(str(cache) + ".lock")
    ready, release = threading.Event(), threading.Event()

    def hold():
        with holder:
            ready.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    ready.wait(5)
    try:
        outcome = backend.build(tiny_request(tiny_onnx), tmp_path / "a.trt")
    finally:
        release.set()
        thread.join()
    assert (tmp_path / "a.trt").is_file() and "locked" in outcome.details["notes"][0]


def test_progress_reports_phases_and_cancel_stops_the_build(backend, tiny_onnx, tmp_path):
    seen = []
    backend.build(tiny_request(tiny_onnx), tmp_path / "a.trt", progress=lambda p, f: seen.append((p, f)))
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("Building engine" in p for p, _ in seen) and any("parsing" in p for p, _ in seen)

    cancel = CancelToken()

    def cancel_midway(phase, fraction):
        if fraction > 0.3:
            cancel.cancel()

    with pytest.raises(BuildCancelled):
        backend.build(tiny_request(tiny_onnx), tmp_path / "b.trt", progress=cancel_midway, cancel=cancel)
    assert not (tmp_path / "b.trt").exists() and not list(tmp_path.glob(".partial-*"))


def test_bad_profiles_and_mismatched_onnx_fail_before_tensorrt_builds(backend, fake_trt, tiny_onnx):
    from sd_unet_trt.models.families import FAMILIES

    inverted = Profile(Range(1, 1, 2), Range(128, 64, 64), Range(64, 64, 64), Range(75, 75, 75))
    with pytest.raises(ProfileError, match="min <= opt <= max"):
        backend.build(tiny_request(tiny_onnx, profile=inverted), tiny_onnx.parent / "x.trt")
    sdxl = tiny_request(tiny_onnx)
    sdxl.family = FAMILIES["sdxl"]
    with pytest.raises(EngineBuildError, match="takes inputs"):
        backend.build(sdxl, tiny_onnx.parent / "x.trt")
    assert "builds" not in fake_trt._stats


def test_unparseable_onnx_reports_the_parsers_errors(backend, tmp_path):
    bad = tmp_path / "unet.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(EngineBuildError, match="TensorRT 10.16.1.11 could not parse unet.onnx"):
        backend.build(tiny_request(bad), tmp_path / "x.trt")
