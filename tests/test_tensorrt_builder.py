"""The TensorRT builder's decisions (pure functions) and its use of the API (against the double)."""
from __future__ import annotations

import sys
import threading

import pytest

from tests.trt_double.fixtures import (ADA_12GB, TINY_PROFILE, backend, backend_on, fake_trt, tiny_onnx,  # noqa: F401
                                       tiny_request, tiny_unet)
from sd_unet_trt.trt_core.backends.base import BuildCancelled, CancelToken
from sd_unet_trt.trt_core.backends.tensorrt import TensorRTBackend
from sd_unet_trt.trt_core.backends.tensorrt.builder import EngineBuildError
from sd_unet_trt.trt_core.backends.tensorrt.hardware import (GIB, MIB, GpuInfo, arch_tag, choose_precision, has_fast_fp16,
                                                 workspace_limit)
from sd_unet_trt.trt_core.backends.tensorrt.library import pip_requirement
from sd_unet_trt.trt_core.backends.tensorrt.plan_file import read_header
from sd_unet_trt.trt_core.backends.tensorrt.progress import PhaseTracker
from sd_unet_trt.trt_core.backends.tensorrt.timing_cache import cache_path
from sd_unet_trt.trt_core.profiles import Profile, ProfileError, Range


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


def test_precision_follows_the_gpu():
    assert choose_precision("fp16", (8, 9)).precision == "fp16" and not choose_precision("fp16", (8, 9)).note
    assert choose_precision("fp16", (6, 1)).precision == "fp32"  # GTX 10xx: FP16 at 1/64 rate
    assert "no fast FP16" in choose_precision("fp16", (6, 1)).note
    assert choose_precision("bf16", (8, 0)).precision == "bf16"
    turing = choose_precision("bf16", (7, 5))
    assert turing.precision == "fp16" and "BF16 needs compute capability 8.0" in turing.note
    assert choose_precision("fp32", (8, 9)).precision == "fp32"
    assert [has_fast_fp16(c) for c in [(6, 0), (6, 1), (7, 5), (12, 0)]] == [True, False, True, True]
    assert arch_tag((8, 6)) == "sm_86" and arch_tag((12, 0)) == "sm_120"
    with pytest.raises(ValueError):
        choose_precision("int8", (8, 9))


def test_pip_requirement_matches_torchs_cuda_major():
    assert pip_requirement("12.1") == "tensorrt-cu12>=10.0,<11"
    assert pip_requirement("13.0") == "tensorrt-cu13>=10.0,<11"
    assert pip_requirement(None) is None and pip_requirement("11.8") is None


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


# ---- availability ----------------------------------------------------------------------------

def test_without_tensorrt_the_backend_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    status = TensorRTBackend().availability()
    assert not status.available and status.reason.startswith("TensorRT is not installed (pip install")
    assert TensorRTBackend().version() == "not installed"


def test_tensorrt_11_and_old_gpus_are_refused_with_a_reason(fake_trt, monkeypatch):
    monkeypatch.setattr(fake_trt, "__version__", "11.4.0.106")
    assert "supports TensorRT 10.x" in backend_on(ADA_12GB).availability().reason
    monkeypatch.setattr(fake_trt, "__version__", "10.16.1.11")
    assert "older than TensorRT 10 supports" in backend_on(GpuInfo(True, (6, 1), GIB, 8 * GIB)).availability().reason
    assert "no CUDA GPU" in backend_on(GpuInfo(False)).availability().reason
    assert backend_on(ADA_12GB).availability().available


# ---- building against the double -------------------------------------------------------------

def test_build_sets_precision_refit_workspace_and_level(fake_trt, tiny_onnx, tmp_path):
    out = tmp_path / "e.trt"
    outcome = backend_on(ADA_12GB).build(tiny_request(tiny_onnx, options={"optimization_level": 4}), out)
    info = fake_trt._plan_info(plan_of(out))
    assert info["flags"] == ["FP16", "REFIT"] and info["level"] == 4
    assert info["workspace"] == outcome.details["workspace_bytes"] > 256 * MIB
    assert info["shapes"]["x"][0] == [[1, 4, 8, 8], [2, 4, 8, 8], [4, 4, 16, 16]]
    header = read_header(out.read_bytes())[0]
    assert (header.tensorrt, header.gpu_arch, header.precision) == ("10.16.1.11", "sm_89", "fp16")
    pascal = backend_on(GpuInfo(True, (7, 5), 3 * GIB, 4 * GIB))
    outcome = pascal.build(tiny_request(tiny_onnx, precision="bf16"), tmp_path / "t.trt")
    assert outcome.precision == "fp16" and "BF16 needs" in outcome.details["notes"][0]
    fake_trt._DEVICE = "sm_80"
    ampere = backend_on(GpuInfo(True, (8, 0), 30 * GIB, 40 * GIB))
    assert ampere.build(tiny_request(tiny_onnx, precision="bf16"), tmp_path / "b.trt").precision == "bf16"
    assert fake_trt._plan_info(plan_of(tmp_path / "b.trt"))["flags"] == ["BF16", "REFIT"]


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
    with pytest.raises(EngineBuildError, match="could not parse"):
        backend.build(tiny_request(bad), tmp_path / "x.trt")
