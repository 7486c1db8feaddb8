"""The double is strict: it refuses what TensorRT refuses (so the backend's tests can fail)."""
from __future__ import annotations

import pytest
import torch

from tests.trt_double import fake_tensorrt as trt
from tests.trt_double.fixtures import tiny_onnx, tiny_unet  # noqa: F401


@pytest.fixture
def engine(tiny_onnx):
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(tiny_onnx))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, rank in [("x", 4), ("timesteps", 1), ("context", 3)]:
        shapes = {"x": ([1, 4, 8, 8], [1, 4, 8, 8], [2, 4, 16, 16]), "timesteps": ([1], [1], [2]),
                  "context": ([1, 77, 768], [1, 77, 768], [2, 154, 768])}[name]
        profile.set_shape(name, *shapes)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    return trt.Runtime(logger).deserialize_cuda_engine(plan)


def bind_all(context, tensors):
    for name, t in tensors.items():
        assert context.set_input_shape(name, tuple(t.shape)) or name == "out"
        assert context.set_tensor_address(name, t.data_ptr())


def tensors(rows=1):
    return {"x": torch.randn(rows, 4, 8, 8), "timesteps": torch.ones(rows), "context": torch.randn(rows, 77, 768)}


def test_runs_only_with_every_shape_address_and_memory(engine):
    ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    feeds, out = tensors(), torch.zeros(1, 4, 8, 8)
    memory = torch.empty(engine.device_memory_size, dtype=torch.uint8)
    ctx.set_input_shape("x", (1, 4, 8, 8))
    assert not ctx.execute_async_v3(0)  # timesteps and context shapes unset
    bind_all(ctx, feeds)
    assert not ctx.execute_async_v3(0)  # no output address
    ctx.set_tensor_address("out", out.data_ptr())
    assert not ctx.execute_async_v3(0)  # no activation memory for a user-managed context
    ctx.device_memory = memory.data_ptr()
    assert ctx.execute_async_v3(0) and out.abs().sum() > 0


def test_shapes_outside_the_profile_and_inverted_profiles_are_refused(engine):
    ctx = engine.create_execution_context()
    assert not ctx.set_input_shape("x", (3, 4, 8, 8))
    assert not ctx.set_input_shape("x", (1, 4, 8))
    assert not ctx.set_input_shape("nonexistent", (1,))
    with pytest.raises(ValueError):
        trt.IOptimizationProfile().set_shape("x", (2, 4, 8, 8), (1, 4, 8, 8), (2, 4, 8, 8))


def test_dynamic_inputs_need_a_profile(tiny_onnx):
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    trt.OnnxParser(network, logger).parse_from_file(str(tiny_onnx))
    assert builder.build_serialized_network(network, builder.create_builder_config()) is None


def test_refit_rejects_unknown_names_and_wrong_sizes(engine):
    assert not engine.refittable
    with pytest.raises(TypeError):
        trt.Refitter(engine, trt.Logger())
    engine._header["flags"].append("REFIT")
    refitter = trt.Refitter(engine, trt.Logger())
    assert not refitter.set_named_weights("nope", trt.Weights(torch.zeros(4).numpy()))
    assert not refitter.set_named_weights("out.2.bias", trt.Weights(torch.zeros(5).numpy()))
    assert refitter.set_named_weights("out.2.bias", trt.Weights(torch.zeros(4).numpy()))


def test_bytes_that_are_not_an_engine_do_not_deserialize():
    assert trt.Runtime(trt.Logger()).deserialize_cuda_engine(b"\x7fELF not a plan") is None


def test_unknown_attributes_cannot_be_read_or_written(engine):
    ctx = engine.create_execution_context()
    with pytest.raises(AttributeError):
        ctx.get_binding_shape(0)
    with pytest.raises(AttributeError):
        trt.Builder(trt.Logger()).create_builder_config().max_workspace_size = 1 << 30


def parsed(tiny_onnx):
    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    assert trt.OnnxParser(network, logger).parse_from_file(str(tiny_onnx))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    for name, shapes in {"x": ([1, 4, 8, 8],) * 3, "timesteps": ([1],) * 3, "context": ([1, 77, 768],) * 3}.items():
        profile.set_shape(name, *shapes)
    config.add_optimization_profile(profile)
    return builder, network, config


@pytest.fixture
def flavor():
    yield trt._set_flavor
    trt._set_flavor("10")


def test_each_version_lacks_what_the_real_one_lacks(flavor, engine):
    flavor("11")
    with pytest.raises(AttributeError, match="in tensorrt 11.4.0.106"):
        engine.device_memory_size
    ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    with pytest.raises(AttributeError):
        ctx.device_memory = 1 << 20
    flavor("10.0")
    with pytest.raises(AttributeError):
        engine.device_memory_size_v2
    with pytest.raises(AttributeError):
        engine.create_runtime_config()  # TensorRT for RTX only
    assert not hasattr(trt, "ComputeCapability")


def test_user_memory_smaller_than_the_engine_needs_is_refused(flavor, engine):
    flavor("11")
    ctx = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
    ctx.set_device_memory(4096, engine.device_memory_size_v2 - 1)
    bind_all(ctx, {**tensors(), "out": torch.zeros(1, 4, 8, 8)})
    assert not ctx.execute_async_v3(0)


def test_rtx_without_a_gpu_builds_only_for_named_capabilities_and_never_refittable(flavor, tiny_onnx):
    flavor("rtx", None)
    builder, network, config = parsed(tiny_onnx)
    assert builder.build_serialized_network(network, config) is None  # no capability named: the current GPU
    config.num_compute_capabilities = 1
    assert not config.set_compute_capability(trt.ComputeCapability.CURRENT, 1)
    assert config.set_compute_capability(trt.ComputeCapability.CURRENT, 0)
    assert builder.build_serialized_network(network, config) is None
    assert config.set_compute_capability(trt.ComputeCapability.SM89, 0)
    config.set_flag(trt.BuilderFlag.REFIT)
    assert builder.build_serialized_network(network, config) is None  # refit needs a GPU at build time
    config.clear_flag(trt.BuilderFlag.REFIT)
    plan = builder.build_serialized_network(network, config)
    runtime = trt.Runtime(trt.Logger())
    assert runtime.get_engine_validity(plan[:runtime.engine_header_size])[0] == trt.EngineValidity.INVALID  # no GPU
    flavor("rtx", "sm_89")
    assert runtime.get_engine_validity(plan[:runtime.engine_header_size])[0] == trt.EngineValidity.VALID
    assert runtime.get_engine_validity(plan[:10])[0] == trt.EngineValidity.INVALID
    flavor("rtx", "sm_90")  # Hopper: the runtime refuses the GPU itself
    assert runtime.deserialize_cuda_engine(plan) is None


def test_rtx_runtime_cache_of_another_gpu_is_refused(flavor, tiny_onnx):
    flavor("rtx", "sm_89")
    cache = trt.IRuntimeConfig().create_runtime_cache()
    blob = bytes(cache.serialize())
    flavor("rtx", "sm_86")
    assert not trt.IRuntimeConfig().create_runtime_cache().deserialize(blob)
    assert not trt.IRuntimeConfig().create_runtime_cache().deserialize(b"garbage")
