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
