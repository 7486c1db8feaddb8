"""TensorRTBackend: the backend interface over builder.py and runtime.py."""
from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Callable

import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.backends.base import (Availability, Backend, BuildOutcome, BuildRequest, CancelToken, ProgressFn,
                                    no_progress)
from sd_unet_trt.trt_core.backends.tensorrt import plan_file
from sd_unet_trt.trt_core.backends.tensorrt.builder import DEFAULT_OPTIMIZATION_LEVEL, BuildSettings, build_plan, onnx_weight_bytes
from sd_unet_trt.trt_core.backends.tensorrt.hardware import GpuInfo, arch_tag, choose_precision, probe_gpu, workspace_limit
from sd_unet_trt.trt_core.backends.tensorrt.library import import_tensorrt, unavailable_reason
from sd_unet_trt.trt_core.backends.tensorrt.logger import make_logger
from sd_unet_trt.trt_core.backends.tensorrt.plan_file import EngineFileError, PlanHeader, StaleEngineError
from sd_unet_trt.trt_core.backends.tensorrt.runtime import ActivationMemory, TensorRTEngine
from sd_unet_trt.trt_core.backends.tensorrt.timing_cache import TimingCache
from sd_unet_trt.trt_core.profiles import Profile

HEADER_PEEK = 64 * 1024


class TensorRTBackend(Backend):
    name = "tensorrt"
    file_suffix = ".trt"

    def __init__(self, cuda_graphs: bool = False, gpu_probe: Callable[[str], GpuInfo] = probe_gpu):
        self.cuda_graphs = cuda_graphs
        self._gpu_probe = gpu_probe
        self._trt: ModuleType | None = None
        self._memory = ActivationMemory()

    def _library(self) -> ModuleType | None:
        if self._trt is None:
            self._trt = import_tensorrt()
        return self._trt

    def availability(self) -> Availability:
        trt = self._library()
        gpu = self._gpu_probe("cuda") if trt is not None else GpuInfo(False)
        reason = unavailable_reason(trt, gpu.available, gpu.capability)
        return Availability(not reason, reason)

    def version(self) -> str:
        trt = self._library()
        return str(trt.__version__) if trt is not None else "not installed"

    def device_arch(self, device: str = "cuda") -> str:
        gpu = self._gpu_probe(device)
        return arch_tag(gpu.capability) if gpu.available and gpu.capability else "none"

    def stale_reason(self, path: Path, device: str = "cuda") -> str:
        """Why the engine file cannot be used on this machine ("" when it can), reading only its header."""
        try:
            with open(path, "rb") as f:
                header = plan_file.read_header(f.read(HEADER_PEEK))[0]
        except (OSError, EngineFileError) as e:
            return str(e)
        return header.stale_reason(self.version(), self.device_arch(device))

    def build(self, request: BuildRequest, out_path: Path, progress: ProgressFn = no_progress,
              cancel: CancelToken | None = None) -> BuildOutcome:
        self.require()
        trt = self._library()
        cancel = cancel or CancelToken()
        gpu = self._gpu_probe(request.device)
        choice = choose_precision(request.precision, gpu.capability)
        options = request.options
        workspace = int(options.get("workspace_bytes") or
                        workspace_limit(gpu.free_bytes, gpu.total_bytes, onnx_weight_bytes(request.onnx_path)))
        settings = BuildSettings(choice.precision, workspace,
                                 int(options.get("optimization_level", DEFAULT_OPTIMIZATION_LEVEL)),
                                 bool(options.get("refittable", True)))
        version, arch = self.version(), arch_tag(gpu.capability)
        cache_dir = Path(options.get("timing_cache_dir") or Path(out_path).parent / "timing-cache")
        timing_cache = TimingCache(trt, cache_dir, arch, version) if options.get("timing_cache", True) else None
        logger = make_logger(trt)
        plan, notes = build_plan(trt, logger, request, settings, timing_cache, progress, cancel)
        shapes = request.profile.input_shapes(request.family)
        header = PlanHeader(version, arch, settings.precision, settings.refittable,
                            {name: [list(s) for s in triple] for name, triple in shapes.items()})
        progress("tensorrt: writing the engine", 0.98)
        with open(out_path, "wb") as f:  # out_path is the pipeline's temp file: it makes the write atomic
            for piece in plan_file.pack(header, plan):
                f.write(piece)
        progress("tensorrt: done", 1.0)
        if choice.note:
            notes.insert(0, choice.note)
        return BuildOutcome(settings.precision, {
            "tensorrt": version, "gpu_arch": arch, "workspace_bytes": workspace,
            "optimization_level": settings.optimization_level, "refittable": settings.refittable, "notes": notes})

    def load(self, path: Path, name: str, family: ModelFamily, profile: Profile, device: str = "cuda") -> TensorRTEngine:
        self.require()
        trt = self._library()
        path = Path(path)
        header, plan = plan_file.unpack(path.read_bytes())
        reason = header.stale_reason(self.version(), self.device_arch(device))
        if reason:
            raise StaleEngineError(f"{path.name}: {reason}")
        expected = {n: [list(s) for s in triple] for n, triple in profile.input_shapes(family).items()}
        if header.input_shapes != expected:
            raise EngineFileError(f"{path.name} was built for other shapes than the profile {profile.label()} "
                                  f"of {family.label}; rebuild it")
        logger = make_logger(trt)
        runtime = trt.Runtime(logger)
        cuda_engine = runtime.deserialize_cuda_engine(plan)
        if cuda_engine is None:
            raise EngineFileError(f"TensorRT could not load {path.name}: {logger.take_errors()}")
        return TensorRTEngine(trt, runtime, cuda_engine, logger, name, family, profile, torch.device(device),
                              self._memory, len(plan), self.cuda_graphs)
