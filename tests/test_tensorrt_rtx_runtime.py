"""TensorRT for RTX's runtime against the double playing `tensorrt_rtx` 1.7: portable engines, the
library's own validity check, the runtime configuration, and the runtime cache file per engine
and GPU that spares the next start the just-in-time compile."""
from __future__ import annotations

import logging

import pytest
import torch

from sd_unet_trt.models.families import TINY
from sd_unet_trt.trt_core.backends.tensorrt import plan_file
from sd_unet_trt.trt_core.backends.tensorrt.hardware import GIB, GpuInfo
from sd_unet_trt.trt_core.backends.tensorrt.plan_file import StaleEngineError
from sd_unet_trt.trt_core.backends.tensorrt.runtime import RefitError
from sd_unet_trt.trt_core.backends.tensorrt.runtime_cache import runtime_cache_path
from sd_unet_trt.trt_core.export import sample_inputs
from tests.trt_double.fixtures import (ADA_12GB, TINY_PROFILE, backend_on, fake_trt, play, rtx_engine_file,  # noqa: F401
                                       tiny_onnx, tiny_unet)

PORTABLE = ["sm_80", "sm_86", "sm_89", "sm_120", "sm_121"]
AMPERE = GpuInfo(True, (8, 6), 10 * GIB, 12 * GIB, "NVIDIA GeForce RTX 3060")


@pytest.fixture
def rtx(fake_trt):
    play("rtx")
    return fake_trt


@pytest.fixture
def engine_file(rtx, tiny_onnx, tmp_path):
    return rtx_engine_file(tmp_path / "tiny.trt", tiny_onnx, PORTABLE)


def inputs(seed=0, rows=1):
    return sample_inputs(TINY, rows, 8, 8, 77, torch.float32, "cpu", torch.Generator().manual_seed(seed))


def run_once(gpu, path, seed=0):
    engine = backend_on(gpu).load(path, "tiny", TINY, TINY_PROFILE, device="cpu")
    out = engine(*inputs(seed))
    engine.close()
    return out


def test_a_portable_engine_runs_on_every_gpu_it_targets(rtx, engine_file, tiny_unet):
    for gpu, device in [(ADA_12GB, "sm_89"), (AMPERE, "sm_86")]:
        play("rtx", device=device)
        assert backend_on(gpu).file_problem(engine_file) == ""
        with torch.no_grad():
            torch.testing.assert_close(run_once(gpu, engine_file), tiny_unet(*inputs()), rtol=1e-3, atol=1e-4)


def test_the_context_gets_user_memory_eager_kernels_and_tensorrts_own_cuda_graphs(rtx, engine_file):
    engine = backend_on(ADA_12GB, cuda_graphs=True).load(engine_file, "tiny", TINY, TINY_PROFILE, device="cpu")
    config = engine.context._runtime_config
    assert config.get_execution_context_allocation_strategy() == rtx.ExecutionContextAllocationStrategy.USER_MANAGED
    assert config.cuda_graph_strategy == rtx.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
    assert config.dynamic_shapes_kernel_specialization_strategy == rtx.DynamicShapesKernelSpecializationStrategy.EAGER
    assert not engine.cuda_graphs  # our own capture stays off: TensorRT for RTX captures its graphs itself
    engine(*inputs())
    engine.close()


def test_the_runtime_cache_spares_the_next_start_its_compile(rtx, engine_file):
    run_once(ADA_12GB, engine_file)
    cache = runtime_cache_path(engine_file, "sm_89", ADA_12GB.name)
    assert cache.name == "tiny.trt.sm_89-NVIDIA-GeForce-RTX-4070.runtime-cache" and cache.is_file()
    assert rtx._stats["jit_compiles"] == 1
    run_once(ADA_12GB, engine_file, seed=1)  # a new start, the same shape: nothing to compile
    assert rtx._stats["jit_compiles"] == 1
    play("rtx", device="sm_86")  # another GPU model: its own file, its own compile
    run_once(AMPERE, engine_file)
    assert rtx._stats["jit_compiles"] == 1 and runtime_cache_path(engine_file, "sm_86", AMPERE.name).is_file()


def test_a_new_shape_adds_to_the_cache_at_its_first_call(rtx, engine_file):
    engine = backend_on(ADA_12GB).load(engine_file, "tiny", TINY, TINY_PROFILE, device="cpu")
    cache = runtime_cache_path(engine_file, "sm_89", ADA_12GB.name)
    engine(*inputs())
    first = cache.read_bytes()
    engine(*inputs(rows=2))
    assert rtx._stats["jit_compiles"] == 2 and len(cache.read_bytes()) > len(first)  # saved without waiting for close
    engine.close()


def test_a_damaged_or_foreign_cache_is_replaced_not_fatal(rtx, engine_file, caplog):
    cache = runtime_cache_path(engine_file, "sm_89", ADA_12GB.name)
    cache.write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING):
        run_once(ADA_12GB, engine_file)
    assert "will be replaced" in caplog.text and cache.read_bytes() != b"\x00garbage"
    assert rtx._stats["jit_compiles"] == 1
    run_once(ADA_12GB, engine_file)
    assert rtx._stats["jit_compiles"] == 1


def test_an_unwritable_cache_costs_only_the_next_compile(rtx, engine_file, monkeypatch, caplog):
    from sd_unet_trt.trt_core.backends.tensorrt import runtime_cache

    def full_disk(path, data):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(runtime_cache, "atomic_write_bytes", full_disk)
    with caplog.at_level(logging.WARNING):
        out = run_once(ADA_12GB, engine_file)
    assert out.shape == (1, 4, 8, 8) and "could not save its runtime cache" in caplog.text


def test_without_a_gpu_or_on_a_gpu_it_does_not_serve_the_engine_cannot_run_and_says_why(rtx, engine_file):
    play("rtx", device=None)
    no_gpu = backend_on(GpuInfo(False))
    assert no_gpu.availability().available  # it still builds
    assert "engines run on an NVIDIA GPU; this machine has none" in no_gpu.file_problem(engine_file)
    play("rtx", device="sm_90")
    hopper = backend_on(GpuInfo(True, (9, 0), 70 * GIB, 80 * GIB, "NVIDIA H100"))
    assert not hopper.availability().available and "does not run on this GPU" in hopper.availability().reason
    with pytest.raises(Exception, match="does not run on this GPU"):
        hopper.load(engine_file, "tiny", TINY, TINY_PROFILE, device="cpu")


def test_the_librarys_own_validity_check_has_the_last_word(rtx, tiny_onnx, tmp_path):
    """A file whose header claims this GPU while its plan was built for another is refused by the
    library's check, before any deserialization."""
    path = rtx_engine_file(tmp_path / "other.trt", tiny_onnx, ["sm_120"])
    data = path.read_bytes()
    header, offset = plan_file.read_header(data)
    claimed = plan_file.PlanHeader(**{**header.__dict__, "targets": ["sm_89"]})
    path.write_bytes(b"".join(bytes(p) for p in plan_file.pack(claimed, data[offset:])))
    backend = backend_on(ADA_12GB)
    assert "cannot run this engine on this GPU" in backend.file_problem(path)
    built_for = rtx_engine_file(tmp_path / "blackwell.trt", tiny_onnx, ["sm_120"])
    assert "built for sm_120, this GPU is sm_89" in backend.file_problem(built_for)
    with pytest.raises(StaleEngineError, match="built for sm_120, this GPU is sm_89"):
        backend.load(built_for, "tiny", TINY, TINY_PROFILE, device="cpu")


def test_an_engine_built_without_a_gpu_is_not_refittable_and_says_so(rtx, engine_file):
    engine = backend_on(ADA_12GB).load(engine_file, "tiny", TINY, TINY_PROFILE, device="cpu")
    with pytest.raises(RefitError, match="without refit support"):
        engine.set_weights({"out.2.bias": torch.zeros(4)})
    engine.close()
