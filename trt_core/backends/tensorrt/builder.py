"""ONNX -> serialized TensorRT engine for one profile, with the TensorRT 10 API only.

Precision comes from builder flags on a weakly typed network (FP16 default, BF16 on request,
neither = FP32); REFIT keeps weights replaceable for LoRA; the workspace pool is capped so the
build fits next to the weights; tactic timings come from and go to the shared timing cache.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from sd_unet_trt.trt_core.backends.base import BuildCancelled, BuildRequest, CancelToken, ProgressFn
from sd_unet_trt.trt_core.backends.tensorrt.progress import make_progress_monitor
from sd_unet_trt.trt_core.backends.tensorrt.timing_cache import TimingCache

DEFAULT_OPTIMIZATION_LEVEL = 3  # TensorRT's default; 4-5 search longer for a few percent


class EngineBuildError(RuntimeError):
    """TensorRT could not build the engine; the message carries TensorRT's own errors."""


@dataclass(frozen=True)
class BuildSettings:
    precision: str  # already resolved for this GPU: "fp16", "bf16" or "fp32"
    workspace_bytes: int
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL
    refittable: bool = True


def onnx_weight_bytes(onnx_path: Path) -> int:
    """Bytes of the ONNX and its external weights: about what the builder holds on the GPU."""
    onnx_path = Path(onnx_path)
    return sum(p.stat().st_size for p in onnx_path.parent.iterdir()
               if p.is_file() and p.name.startswith(onnx_path.name))


def build_plan(trt: ModuleType, logger, request: BuildRequest, settings: BuildSettings,
               timing_cache: TimingCache | None, progress: ProgressFn, cancel: CancelToken) -> tuple[memoryview, list[str]]:
    """The serialized engine, and notes for the user (e.g. about the timing cache)."""
    if not 0 <= settings.optimization_level <= 5:
        raise ValueError(f"builder optimization level must be 0-5, got {settings.optimization_level}")
    shapes = request.profile.validate().input_shapes(request.family)
    notes: list[str] = []
    progress("tensorrt: parsing the ONNX", 0.0)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(request.onnx_path)):
        errors = "; ".join(parser.get_error(i).desc() for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {request.onnx_path}: {errors or logger.take_errors()}")
    cancel.raise_if_cancelled()

    inputs = {network.get_input(i).name for i in range(network.num_inputs)}
    if inputs != set(shapes):
        raise EngineBuildError(f"the ONNX takes inputs {sorted(inputs)}, a {request.family.label} UNet takes "
                               f"{sorted(shapes)}; export it again")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.optimization_level
    if settings.precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif settings.precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    if settings.refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    profile = builder.create_optimization_profile()
    for name, (smallest, typical, largest) in shapes.items():
        profile.set_shape(name, smallest, typical, largest)
    config.add_optimization_profile(profile)
    if timing_cache is not None:
        note = timing_cache.attach(config, logger)
        if note:
            notes.append(note)
    monitor = make_progress_monitor(trt, progress, cancel, 0.02, 0.97)
    config.progress_monitor = monitor

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        if cancel.cancelled:
            logger.take_errors()
            raise BuildCancelled("TensorRT build cancelled")
        raise EngineBuildError(f"TensorRT could not build the engine: {logger.take_errors()}")
    if timing_cache is not None:
        timing_cache.save(config)
    return memoryview(plan), notes
