"""TensorRTBackend: the backend interface over library.py, builder.py and runtime.py.

Which library serves (TensorRT 10/11, or TensorRT for RTX) is chosen once, from the GPU and the
user's preference (library.choose_library). TensorRT for RTX also builds on a machine without a
GPU: engines for the compute capabilities it supports, not refittable (refit needs a GPU at build
time), which run on the user's GPU after a just-in-time compile kept in a runtime cache file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.backends.base import (Availability, Backend, BuildOutcome, BuildRequest, EngineFileError,
                                                arch_tag)
from sd_unet_trt.trt_core.backends.tensorrt import library as libraries
from sd_unet_trt.trt_core.backends.tensorrt import plan_file
from sd_unet_trt.trt_core.backends.tensorrt.builder import (DEFAULT_OPTIMIZATION_LEVEL, BuildSettings, build_plan,
                                                            onnx_weight_bytes)
from sd_unet_trt.trt_core.backends.tensorrt.hardware import GpuInfo, probe_gpu, workspace_limit
from sd_unet_trt.trt_core.backends.tensorrt.logger import make_logger
from sd_unet_trt.trt_core.backends.tensorrt.plan_file import PORTABLE, PlanHeader, StaleEngineError
from sd_unet_trt.trt_core.backends.tensorrt.runtime import ActivationMemory, TensorRTEngine
from sd_unet_trt.trt_core.backends.tensorrt.runtime_cache import RuntimeCacheFile, runtime_cache_path
from sd_unet_trt.trt_core.backends.tensorrt.timing_cache import TimingCache
from sd_unet_trt.trt_core.precision import EXPORT_WEIGHTS, QUANTIZED
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.progress import CancelToken, ProgressFn, no_progress
from sd_unet_trt.trt_core.quantize import capability_problem, exporter_problem

HEADER_PEEK = 64 * 1024
PRECISIONS = EXPORT_WEIGHTS  # strongly typed: the export's own (a bf16 export is not made)


def portable_targets(library: libraries.Library, precision: str = "fp16") -> tuple[tuple[int, int], ...]:
    """The compute capabilities this TensorRT for RTX builds for and runs on, of those whose tensor
    cores have `precision` (FP8 from Ada on)."""
    known = {(int(name[2:-1]), int(name[-1])) for name in dir(library.module.ComputeCapability)
             if name.startswith("SM") and name[2:].isdigit()}
    return tuple(sorted(c for c in known & libraries.RTX_RUNS_ON if capability_problem(precision, c) is None))


class TensorRTBackend(Backend):
    name = "tensorrt"
    file_suffix = ".trt"
    quantizes_onnx = True
    instance_options = {"cuda_graphs": False}
    build_rate = (60, 500)  # tactic timing dominates

    def __init__(self, cuda_graphs: bool = False, gpu_probe: Callable[[str], GpuInfo] = probe_gpu,
                 library_preference: str | None = None, importer=libraries.import_library):
        self.cuda_graphs = cuda_graphs
        self.library_preference = library_preference or libraries.preference()
        self._gpu_probe = gpu_probe
        self._importer = importer
        self._choice: libraries.Choice | None = None
        self._memory = ActivationMemory()

    def _gpu(self) -> GpuInfo:
        return self._gpu_probe("cuda")

    def _gpu_name(self, device: str) -> str:
        return self._gpu_probe(device).name

    def choice(self) -> libraries.Choice:
        if self._choice is None:
            gpu = self._gpu()
            self._choice = libraries.choose_library(gpu.capability if gpu.available else None,
                                                    self.library_preference, self._importer)
        return self._choice

    @property
    def library(self) -> libraries.Library | None:
        return self.choice().library

    def availability(self) -> Availability:
        choice = self.choice()
        return Availability(choice.library is not None, choice.reason)

    def version(self) -> str:
        return self.library.tag if self.library is not None else "not installed"

    def device_arch(self, device: str = "cuda") -> str:
        gpu = self._gpu_probe(device)
        return arch_tag(gpu.capability) if gpu.available and gpu.capability else "none"

    def precision_problem(self, precision: str) -> str | None:
        if precision not in PRECISIONS:
            return (f"TensorRT engines take their precision from the export, which is fp16 or fp32 "
                    f"({precision} is not offered)")
        if precision in QUANTIZED and exporter_problem():
            return exporter_problem()
        gpu = self._gpu()
        return capability_problem(precision, gpu.capability) if gpu.available else None

    def can_run(self, device: str = "cuda") -> str:
        """Why engines cannot run here ("" when they can)."""
        library, gpu = self.library, self._gpu_probe(device)
        if library is None:
            return self.choice().reason
        if not gpu.available:
            return f"{library.label} engines run on an NVIDIA GPU; this machine has none"
        if not library.runs_on(gpu.capability):
            return f"{library.label} does not run on this GPU ({arch_tag(gpu.capability)})"
        return ""

    def file_problem(self, path: Path, device: str = "cuda") -> str:
        """Why the engine file cannot serve on this machine ("" when it can), reading only its header
        (and, with TensorRT for RTX on a GPU, the library's own validity check of the plan's header)."""
        try:
            with open(path, "rb") as f:
                head = f.read(HEADER_PEEK)
            header, offset = plan_file.read_header(head)
        except (OSError, EngineFileError) as e:
            return str(e)
        reason = self.can_run(device)
        if reason:
            return reason
        library = self.library
        reason = header.stale_reason(library.name, library.version, self.device_arch(device))
        if reason or not library.rtx:
            return reason
        runtime = library.module.Runtime(make_logger(library.module))
        validity, diagnostics = runtime.get_engine_validity(head[offset:offset + runtime.engine_header_size])
        if validity == library.module.EngineValidity.INVALID:
            return f"{library.label} cannot run this engine on this GPU (diagnostics {diagnostics}); rebuild it"
        return ""

    def build(self, request: BuildRequest, out_path: Path, progress: ProgressFn = no_progress,
              cancel: CancelToken | None = None) -> BuildOutcome:
        self.require()
        problem = self.precision_problem(request.precision)
        if problem:
            raise ValueError(problem)
        library = self.library
        cancel = cancel or CancelToken()
        gpu = self._gpu()
        options = request.options
        if gpu.available:
            workspace = int(options.get("workspace_bytes") or
                            workspace_limit(gpu.free_bytes, gpu.total_bytes, onnx_weight_bytes(request.onnx_path)))
        else:
            workspace = options.get("workspace_bytes")
        portable = library.rtx and not (options.get("target") == "current" and gpu.available)
        quantized = request.precision in QUANTIZED
        # a quantized engine's weight scales were calibrated on the export's weights: new weights
        # (a LoRA) would need new scales, so it is not refittable and such calls run on the WebUI's UNet
        settings = BuildSettings(workspace, int(options.get("optimization_level", DEFAULT_OPTIMIZATION_LEVEL)),
                                 bool(options.get("refittable", True)) and gpu.available and not quantized,
                                 portable_targets(library, request.precision) if portable else None)
        arch = PORTABLE if portable else arch_tag(gpu.capability)
        targets = [arch_tag(c) for c in settings.compute_capabilities] if portable else []
        cache_dir = Path(options.get("timing_cache_dir") or Path(out_path).parent / "timing-cache")
        # TensorRT for RTX times nothing ahead of time (it compiles kernels on the user's GPU)
        timing_cache = (TimingCache(library.module, cache_dir, arch, library.version)
                        if options.get("timing_cache", True) and not library.rtx else None)
        logger = make_logger(library.module, without_gpu=not gpu.available)
        plan, notes = build_plan(library, logger, request, settings, timing_cache, progress, cancel)
        shapes = request.profile.input_shapes(request.family)
        header = PlanHeader(library.name, library.version, arch, request.precision, settings.refittable,
                            {name: [list(s) for s in triple] for name, triple in shapes.items()}, targets)
        progress("tensorrt: writing the engine", 0.98)
        with open(out_path, "wb") as f:  # out_path is the pipeline's temp file: it makes the write atomic
            for piece in plan_file.pack(header, plan):
                f.write(piece)
        progress("tensorrt: done", 1.0)
        if quantized:
            notes.append(f"{request.precision}: not refittable (its weight scales were calibrated on the export's "
                         "weights; changed weights such as a LoRA run on the WebUI's UNet)")
        elif not settings.refittable and library.rtx and not gpu.available:
            notes.append("built without a GPU: not refittable (changed weights such as a LoRA run on the WebUI's UNet)")
        return BuildOutcome(request.precision, {
            "library": library.name, "library_version": library.version, "gpu_arch": arch, "targets": targets,
            "workspace_bytes": workspace, "optimization_level": settings.optimization_level,
            "refittable": settings.refittable, "notes": notes})

    def load(self, path: Path, name: str, family: ModelFamily, profile: Profile, device: str = "cuda") -> TensorRTEngine:
        self.require()
        reason = self.can_run(device)
        if reason:
            raise StaleEngineError(f"{Path(path).name}: {reason}")
        library = self.library
        trt = library.module
        path = Path(path)
        header, plan = plan_file.unpack(path.read_bytes())
        arch = self.device_arch(device)
        reason = header.stale_reason(library.name, library.version, arch)
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
            raise EngineFileError(f"{library.label} could not load {path.name}: {logger.take_errors()}")
        cache = (RuntimeCacheFile(runtime_cache_path(path, arch, self._gpu_name(device))) if library.rtx else None)
        return TensorRTEngine(trt, runtime, cuda_engine, logger, name, family, profile, torch.device(device),
                              self._memory, len(plan), self.cuda_graphs and not library.rtx, runtime_cache=cache)
