"""The TensorRT runtime against the strict double (TensorRT 10.0, 10.16 and 11.4 where the memory API
differs): real numbers from real buffers. TensorRT for RTX's runtime: test_tensorrt_rtx_runtime.py."""
from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sd_unet_trt.models.families import TINY
from tests.trt_double.fixtures import (TINY_PROFILE, backend, backend_on, fake_trt, play, registered_double,  # noqa: F401
                                       tiny_onnx, tiny_request, tiny_unet)
from sd_unet_trt.trt_core.backends import get_backend
from sd_unet_trt.trt_core.backends.base import EngineFileError
from sd_unet_trt.trt_core.catalog import router_for_checkpoint
from sd_unet_trt.trt_core.hook_policy import engines_router
from sd_unet_trt.trt_core.identity import checkpoint_of_module
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.unet_source import ModuleUNet
from sd_unet_trt.trt_core.backends.tensorrt.hardware import GpuInfo
from sd_unet_trt.trt_core.backends.tensorrt.plan_file import StaleEngineError, read_header
from sd_unet_trt.trt_core.backends.tensorrt.runtime import EngineRunError, RefitError, TensorRTEngine
from sd_unet_trt.trt_core.export import sample_inputs
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.workspace import Workspace


@functools.lru_cache(maxsize=4)
def ort_session(onnx_path, bias_override=None):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path))
    for init in model.graph.initializer:
        if bias_override is not None and init.name == "out.2.bias":
            init.CopyFrom(numpy_helper.from_array(np.full(4, bias_override, dtype=np.float32), init.name))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def ort_reference(onnx_path, x, t, c, bias_override=None):
    session = ort_session(onnx_path, bias_override)
    return torch.from_numpy(session.run(None, {"x": x.float().numpy(), "timesteps": t.float().numpy(),
                                               "context": c.float().numpy()})[0])


@pytest.fixture
def engine_file(backend, tiny_onnx, tmp_path):
    path = tmp_path / "tiny.trt"
    backend.build(tiny_request(tiny_onnx), path)
    return path


def load(backend, path, profile=TINY_PROFILE) -> TensorRTEngine:
    return backend.load(path, "tiny", TINY, profile, device="cpu")


def inputs(rows, h, w, ctx=77, dtype=torch.float32, seed=0):
    return sample_inputs(TINY, rows, h, w, ctx, dtype, "cpu", torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("flavor", ["10.0", "10", "11"])  # device_memory / set_device_memory, _v2 sizes
def test_engine_output_matches_the_onnx_and_the_torch_unet(fake_trt, tiny_onnx, tiny_unet, tmp_path, flavor):
    play(flavor)
    backend = backend_on(GpuInfo(True, (8, 9), 8 << 30, 8 << 30))
    engine_file = tmp_path / "tiny.trt"
    backend.build(tiny_request(tiny_onnx), engine_file)
    engine = load(backend, engine_file)
    x, t, c = inputs(2, 8, 8)
    out = engine(x, t, c)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, ort_reference(tiny_onnx, x, t, c), rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(out, tiny_unet(x, t, c), rtol=1e-3, atol=1e-4)


def test_fp16_inputs_are_cast_once_into_the_engines_dtype(backend, engine_file, tiny_onnx):
    """(An fp16 engine is built from an fp16 export: strongly typed, the ONNX's types are the engine's.)"""
    engine = load(backend, engine_file)
    assert engine.dtypes["x"] == torch.float32  # this ONNX has fp32 inputs
    x, t, c = inputs(1, 8, 16, dtype=torch.float16)
    out = engine(x, t, c)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ort_reference(tiny_onnx, x, t, c), rtol=2e-3, atol=2e-3)


def test_one_deserialize_one_context_and_buffers_kept_per_shape(backend, engine_file, fake_trt):
    engine = load(backend, engine_file)
    small, large = inputs(2, 8, 8), inputs(3, 16, 12, ctx=154)
    first = engine(*small)
    pointers = {k: v.data_ptr() for k, v in engine._bound[next(iter(engine._bound))].inputs.items()}
    for _ in range(3):
        engine(*large)
        again = engine(*small)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    assert fake_trt._stats["deserializations"] == 1 and fake_trt._stats["contexts"] == 1
    assert len(engine._bound) == 2
    bound = engine._bound[tuple(tuple(t.shape) for t in small)]
    assert {k: v.data_ptr() for k, v in bound.inputs.items()} == pointers
    assert fake_trt._stats["runs"] == 7


def test_returned_output_is_not_overwritten_by_the_next_call(backend, engine_file):
    engine = load(backend, engine_file)
    a = engine(*inputs(2, 8, 8, seed=1))
    kept = a.clone()
    engine(*inputs(2, 8, 8, seed=2))
    torch.testing.assert_close(a, kept, rtol=0, atol=0)


def test_switching_engines_needs_no_files(backend, tiny_onnx, tmp_path):
    wide = Profile.from_dict({"batch": {"min": 1, "opt": 1, "max": 1}, "height": {"min": 64, "opt": 64, "max": 64},
                              "width": {"min": 64, "opt": 128, "max": 128},
                              "tokens": {"min": 75, "opt": 75, "max": 75}})
    backend.build(tiny_request(tiny_onnx), tmp_path / "a.trt")
    backend.build(tiny_request(tiny_onnx, profile=wide), tmp_path / "b.trt")
    a, b = load(backend, tmp_path / "a.trt"), load(backend, tmp_path / "b.trt", wide)
    (tmp_path / "a.trt").unlink()
    (tmp_path / "b.trt").unlink()
    for _ in range(2):
        xa, xb = inputs(2, 8, 8), inputs(1, 8, 16)
        torch.testing.assert_close(a(*xa), ort_reference(tiny_onnx, *xa), rtol=0, atol=0)
        torch.testing.assert_close(b(*xb), ort_reference(tiny_onnx, *xb), rtol=0, atol=0)
    assert backend._memory.held_bytes() == max(a.activation_bytes, b.activation_bytes)


WIDE_ONLY = Profile.from_dict({"batch": {"min": 1, "opt": 1, "max": 1}, "height": {"min": 64, "opt": 64, "max": 64},
                               "width": {"min": 192, "opt": 192, "max": 256},
                               "tokens": {"min": 75, "opt": 75, "max": 75}})


def test_a_checkpoints_engines_share_one_activation_memory_counted_once(registered_double, tiny_unet, tmp_path):
    """As the WebUI, the CLI and serving get them: through the catalog's router, each engine loaded
    on its first call. One backend instance loads both, so they share one activation buffer, and
    the router's budget counts that buffer once (issue 21)."""
    workspace, checkpoint = Workspace(tmp_path), checkpoint_of_module(tiny_unet, "tiny")
    for profile in (TINY_PROFILE, WIDE_ONLY):
        build_engine(ModuleUNet(tiny_unet, checkpoint, TINY), profile, get_backend("tensorrt"), workspace,
                     precision="fp32", device="cpu")
    router, left_out = router_for_checkpoint(workspace, checkpoint.sha256, "cpu")
    assert left_out == [] and len(router.records) == 2
    for call in (inputs(2, 8, 8), inputs(1, 8, 24)):  # only the first engine covers one, only the second the other
        assert router.run(*call).covered
    a, b = (router._loaded[engine_id] for engine_id in router.loaded)
    assert a.profile != b.profile and a.activation_bytes != b.activation_bytes
    assert a._memory is b._memory
    assert a._memory.held_bytes() == max(a.activation_bytes, b.activation_bytes)
    assert router.loaded_bytes == a._plan_bytes + b._plan_bytes + max(a.activation_bytes, b.activation_bytes)
    # the WebUI's CUDA graphs setting is part of the instance's key, not set on a shared instance
    hooked, _ = engines_router(workspace, checkpoint.sha256, "cpu", cuda_graphs=True)
    assert hooked.run(*inputs(2, 8, 8)).covered
    graphs = get_backend("tensorrt", cuda_graphs=True)
    assert hooked._loaded[hooked.loaded[0]]._memory is graphs._memory is not a._memory
    assert graphs.cuda_graphs and not get_backend("tensorrt").cuda_graphs


def test_the_registry_makes_one_backend_per_name_and_options(registered_double):
    with ThreadPoolExecutor(8) as pool:
        made = {id(b) for b in pool.map(lambda _: get_backend("tensorrt"), range(64))}
    assert made == {id(get_backend("tensorrt"))}
    assert get_backend("tensorrt", cuda_graphs=True) is get_backend("tensorrt", cuda_graphs=True) is not get_backend("tensorrt")
    assert get_backend("tensorrt", cuda_graphs=False) is get_backend("tensorrt")  # the default: the same one
    # an option a backend does not take does not make another instance of it
    assert get_backend("onnxruntime", cuda_graphs=True) is get_backend("onnxruntime")


def test_a_call_outside_the_profile_is_refused_before_tensorrt(backend, engine_file, fake_trt):
    engine = load(backend, engine_file)
    with pytest.raises(ValueError, match=r"x of shape \[1, 4, 8, 24\] is outside the engine's profile"):
        engine(*inputs(1, 8, 24))
    with pytest.raises(ValueError, match="takes"):
        engine(*inputs(1, 8, 8), y=torch.zeros(1, 2816))
    assert "rejected_runs" not in fake_trt._stats and "runs" not in fake_trt._stats


def test_skipping_an_input_shape_is_caught(backend, engine_file, monkeypatch):
    """A backend that forgets one input's shape must fail loudly, not return garbage."""
    engine = load(backend, engine_file)
    real = engine._set_shapes
    monkeypatch.setattr(engine, "_set_shapes", lambda tensors: real({k: v for k, v in tensors.items() if k != "context"}))
    with pytest.raises(EngineRunError):
        engine(*inputs(1, 8, 8))


def test_engine_from_another_tensorrt_or_gpu_is_stale_and_never_loaded(fake_trt, tiny_onnx, tmp_path):
    path = tmp_path / "old.trt"
    play("10", device="sm_86")
    backend_on(GpuInfo(True, (8, 6), 8 << 30, 8 << 30)).build(tiny_request(tiny_onnx), path)
    play("11")
    current = backend_on(GpuInfo(True, (8, 9), 8 << 30, 8 << 30))
    reason = current.file_problem(path)
    assert "built with tensorrt 10.16.1.11, this is tensorrt 11.4.0.106" in reason and "sm_86" in reason
    assert reason.endswith("rebuild it")
    with pytest.raises(StaleEngineError, match="built with tensorrt 10.16.1.11, this is tensorrt 11.4.0.106"):
        load(current, path)
    assert "deserializations" not in fake_trt._stats


def test_foreign_and_damaged_files_are_refused_clearly(backend, engine_file, tmp_path):
    foreign = tmp_path / "foreign.trt"
    foreign.write_bytes(b"\x00" * 100)
    with pytest.raises(EngineFileError, match="not a TensorRT engine file"):
        load(backend, foreign)
    damaged = tmp_path / "damaged.trt"
    data = engine_file.read_bytes()
    header_end = read_header(data)[1]
    damaged.write_bytes(data[:header_end] + b"garbage" * 10)
    with pytest.raises(EngineFileError, match="TensorRT 10.16.1.11 could not load damaged.trt: .*Magic tag"):
        load(backend, damaged)
    assert backend.file_problem(engine_file) == ""
    assert "no header" in backend.file_problem(foreign)


def test_refit_changes_the_output_and_rejects_bad_weights(backend, engine_file, tiny_onnx):
    engine = load(backend, engine_file)
    x, t, c = inputs(1, 8, 8)
    before = engine(x, t, c)
    bias = np.full(4, 0.25, dtype=np.float32)
    with pytest.raises(RefitError, match="no weights named nonexistent.weight"):
        engine.set_weights({"nonexistent.weight": torch.zeros(3)})
    with pytest.raises(RefitError, match="out.2.bias has 5 values"):
        engine.set_weights({"out.2.bias": torch.zeros(5)})
    torch.testing.assert_close(engine(x, t, c), before, rtol=0, atol=0)
    engine.set_weights({"out.2.bias": torch.from_numpy(bias)})
    after = engine(x, t, c)
    torch.testing.assert_close(after, ort_reference(tiny_onnx, x, t, c, bias_override=0.25), rtol=0, atol=0)
    assert not torch.equal(after, before)


def test_refit_of_an_engine_built_without_refit_is_refused(backend, tiny_onnx, tmp_path):
    path = tmp_path / "fixed.trt"
    backend.build(tiny_request(tiny_onnx, options={"refittable": False}), path)
    with pytest.raises(RefitError, match="without refit support"):
        load(backend, path).set_weights({"out.2.bias": torch.zeros(4)})


def test_engine_checks_its_io_against_the_family(backend, engine_file):
    from sd_unet_trt.models.families import FAMILIES
    with pytest.raises(EngineFileError, match="other shapes"):
        backend.load(engine_file, "x", FAMILIES["sdxl"], TINY_PROFILE, device="cpu")
