"""ONNX -> serialized engine for one profile, with TensorRT 10, 11 or TensorRT for RTX.

One code path: Polygraphy's loaders parse the ONNX into a strongly typed network (the engine's
precision is the export's: fp16 or fp32), make the builder config (the profile, the workspace
pool, refit, the optimization level, the progress monitor; with TensorRT for RTX, the compute
capabilities to build for) and build. Kept our own, around them: the timing cache (written
atomically; a damaged or foreign one is replaced, never fatal), the logger (TensorRT's errors for
a one-line message), and the progress monitor (the tab's bar and Cancel).
"""
from __future__ import annotations

import logging
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import torch

from sd_unet_trt.trt_core.backends.base import BuildRequest
from sd_unet_trt.trt_core.backends.tensorrt.library import Library
from sd_unet_trt.trt_core.backends.tensorrt.progress import make_progress_monitor
from sd_unet_trt.trt_core.backends.tensorrt.timing_cache import TimingCache
from sd_unet_trt.trt_core.precision import EXPORT_WEIGHTS, PRECISIONS
from sd_unet_trt.trt_core.progress import BuildCancelled, CancelToken, ProgressFn

DEFAULT_OPTIMIZATION_LEVEL = 3  # TensorRT's default; 4-5 search longer for a few percent
# the export's input type for each engine precision (quantized exports compute in fp32 between Q/DQ pairs)
ONNX_TYPES = {name: {torch.float16: "HALF", torch.float32: "FLOAT"}[PRECISIONS[name].trace_dtype]
              for name in EXPORT_WEIGHTS}


class EngineBuildError(RuntimeError):
    """TensorRT could not build the engine; the message carries TensorRT's own errors."""


@dataclass(frozen=True)
class BuildSettings:
    workspace_bytes: int | None  # None: the library's default (a build without a GPU times nothing)
    optimization_level: int = DEFAULT_OPTIMIZATION_LEVEL
    refittable: bool = True
    compute_capabilities: tuple[tuple[int, int], ...] | None = None  # TensorRT for RTX: None = the current GPU


def onnx_weight_bytes(onnx_path: Path) -> int:
    """Bytes of the ONNX and its external weights: about what the builder holds on the GPU."""
    onnx_path = Path(onnx_path)
    return sum(p.stat().st_size for p in onnx_path.parent.iterdir()
               if p.is_file() and p.name.startswith(onnx_path.name))


def polygraphy_for(library: Library) -> SimpleNamespace:
    """Polygraphy's TensorRT loaders, on this library. Polygraphy picks its module when its
    TensorRT backend is first imported, so a process uses one library."""
    import polygraphy.config
    import polygraphy.logger.logger

    polygraphy.logger.logger.COLORED_MODULE_PRESENT = False  # it logs to Python logging: no colors, no print saying so

    if "polygraphy.backend.trt" in sys.modules and polygraphy.config.USE_TENSORRT_RTX != library.rtx:
        raise EngineBuildError(f"this process already builds with the other TensorRT library; restart to use "
                               f"{library.label}")
    polygraphy.config.USE_TENSORRT_RTX = library.rtx
    if library.module.__name__.endswith("_bindings") and library.name not in sys.modules:
        # only the bindings wheel is installed: it is what the `tensorrt`/`tensorrt_rtx` wrapper re-exports
        sys.modules[library.name] = library.module
    from polygraphy.backend.tensorrt_rtx.config import CreateConfigRTX
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.backend.trt import util as trt_util
    from polygraphy.exception import PolygraphyException
    from polygraphy.logger import G_LOGGER

    G_LOGGER.use_python_logging_system = True  # its messages go to Python logging, not to stdout
    return SimpleNamespace(CreateConfig=CreateConfigRTX if library.rtx else CreateConfig, Profile=Profile,
                           NetworkFromOnnxPath=NetworkFromOnnxPath, EngineBytesFromNetwork=EngineBytesFromNetwork,
                           trt_util=trt_util, Error=PolygraphyException)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def polygraphy_errors() -> Iterator[list[str]]:
    """The errors Polygraphy logs meanwhile (the parser's, among others)."""
    handler = _Collect()
    logger = logging.getLogger("Polygraphy")
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _said(logger, polygraphy_messages: list[str], error: Exception) -> str:
    trt_errors = logger.take_errors() if logger.errors else ""
    return "; ".join(filter(None, [trt_errors, *polygraphy_messages[-3:]])) or str(error)


def build_plan(library: Library, logger, request: BuildRequest, settings: BuildSettings,
               timing_cache: TimingCache | None, progress: ProgressFn, cancel: CancelToken) -> tuple[memoryview, list[str]]:
    """The serialized engine, and notes for the user (e.g. about the timing cache)."""
    if not 0 <= settings.optimization_level <= 5:
        raise ValueError(f"builder optimization level must be 0-5, got {settings.optimization_level}")
    shapes = request.profile.validate().input_shapes(request.family)
    trt = library.module
    poly = polygraphy_for(library)
    poly.trt_util.TRT_LOGGER = logger  # Polygraphy's loaders log through it: we keep the errors
    notes: list[str] = []
    progress("tensorrt: parsing the ONNX", 0.0)
    with polygraphy_errors() as said:
        try:
            builder, network, parser = poly.NetworkFromOnnxPath(str(request.onnx_path), strongly_typed=True)()
        except poly.Error as e:
            raise EngineBuildError(f"{library.label} could not parse {Path(request.onnx_path).name}: "
                                   f"{_said(logger, said, e)}") from None
        cancel.raise_if_cancelled()
        inputs = {network.get_input(i).name: network.get_input(i) for i in range(network.num_inputs)}
        if set(inputs) != set(shapes):
            raise EngineBuildError(f"the ONNX takes inputs {sorted(inputs)}, a {request.family.label} UNet takes "
                                   f"{sorted(shapes)}; export it again")
        held = inputs["x"].dtype.name
        if held != ONNX_TYPES.get(request.precision):
            raise EngineBuildError(f"the network is strongly typed: a {request.precision} engine needs a "
                                   f"{request.precision} export, this one computes in {held}; export it again")
        profile = poly.Profile()
        for name, (smallest, typical, largest) in shapes.items():
            profile.add(name, min=smallest, opt=typical, max=largest)
        options = dict(profiles=[profile], refittable=settings.refittable,
                       builder_optimization_level=settings.optimization_level,
                       profiling_verbosity=trt.ProfilingVerbosity.LAYER_NAMES_ONLY,
                       progress_monitor=make_progress_monitor(trt, progress, cancel, 0.02, 0.97))
        if settings.workspace_bytes is not None:
            options["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: settings.workspace_bytes}
        if library.rtx:
            targets = settings.compute_capabilities
            options.update(use_gpu=targets is None, compute_capabilities=list(targets) if targets else None)
        try:
            config = poly.CreateConfig(**options)(builder, network)
            if timing_cache is not None:
                note = timing_cache.attach(config, logger)
                if note:
                    notes.append(note)
            plan = poly.EngineBytesFromNetwork((builder, network, parser), config)()
        except poly.Error as e:
            if cancel.cancelled:
                logger.take_errors()
                raise BuildCancelled("TensorRT build cancelled") from None
            raise EngineBuildError(f"{library.label} could not build the engine: {_said(logger, said, e)}") from None
    if logger.profile_problems:  # TensorRT built an engine that would fail at an end of the profile
        raise EngineBuildError(f"{library.label} cannot run every shape of this profile: "
                               f"{'; '.join(logger.profile_problems[:2])}; build a smaller profile (fewer images or "
                               f"pixels at its top end)")
    if timing_cache is not None:
        timing_cache.save(config)
    return memoryview(plan), notes
