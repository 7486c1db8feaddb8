"""Profiles, the timing cache, the builder config and the builder. A "plan" is a fixed-size JSON
header (library, version, the GPUs it runs on, typing, profile, flags) followed by the ONNX."""
from __future__ import annotations

import hashlib
import json

from tests.trt_double.fake_tensorrt._network import INetworkDefinition
from tests.trt_double.fake_tensorrt._state import State, _Strict, count
from tests.trt_double.fake_tensorrt._types import (ComputeCapability, DeviceType, IHostMemory, ILogger, IProgressMonitor,
                                                  MemoryPoolType, ProfilingVerbosity, error)

PLAN_MAGIC = b"FAKE-TRT-PLAN\x00"
PLAN_HEADER_SIZE = 2048  # the double's Runtime.engine_header_size: validity is judged from these bytes
CACHE_MAGIC = b"FAKE-TRT-TIMING\x00"


def pack_plan(header: dict, onnx_bytes: bytes) -> IHostMemory:
    head = json.dumps(header).encode()
    assert len(head) <= PLAN_HEADER_SIZE - len(PLAN_MAGIC), "the double's plan header outgrew its size"
    return IHostMemory(PLAN_MAGIC + head.ljust(PLAN_HEADER_SIZE - len(PLAN_MAGIC)) + onnx_bytes)


def plan_info(plan) -> dict | None:
    """The header of a plan, or None when the bytes are no plan (or too few of them)."""
    data = bytes(plan[:PLAN_HEADER_SIZE])
    if not data.startswith(PLAN_MAGIC) or len(data) < PLAN_HEADER_SIZE:
        return None
    try:
        return json.loads(data[len(PLAN_MAGIC):])
    except ValueError:
        return None


class IOptimizationProfile(_Strict):
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:
        mn, op, mx = (tuple(int(d) for d in s) for s in (min, opt, max))
        if not len(mn) == len(op) == len(mx):
            raise ValueError(f"{input}: min, opt and max have different ranks")
        if any(d < 0 for d in mn) or not all(a <= b <= c for a, b, c in zip(mn, op, mx)):
            raise ValueError(f"{input}: profile needs 0 <= min <= opt <= max in every dimension, got {mn} {op} {mx}")
        self._shapes[input] = (mn, op, mx)

    def get_shape(self, input: str):
        return [list(s) for s in self._shapes[input]]


class ITimingCache(_Strict):
    def __init__(self, entries: set[str], device: str | None):
        self._entries, self._device = set(entries), device

    def serialize(self) -> IHostMemory:
        body = json.dumps({"version": State.flavor.version, "device": self._device, "entries": sorted(self._entries)})
        return IHostMemory(CACHE_MAGIC + body.encode())

    def combine(self, input_cache: "ITimingCache", ignore_mismatch: bool) -> bool:
        if input_cache._device != self._device and not ignore_mismatch:
            return False
        self._entries |= input_cache._entries
        return True

    def reset(self) -> bool:
        self._entries.clear()
        return True


class IBuilderConfig(_Strict):
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger
        self._flags: set = set()
        self._pools: dict[MemoryPoolType, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._timing_cache: ITimingCache | None = None
        self._level = 3
        self._monitor: IProgressMonitor | None = None
        self._verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY
        self._capabilities: list[ComputeCapability] = []

    def set_flag(self, flag) -> None:
        self._flags.add(flag.name)

    def clear_flag(self, flag) -> None:
        self._flags.discard(flag.name)

    def get_flag(self, flag) -> bool:
        return flag.name in self._flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        if pool_size < 0:
            raise ValueError("pool size must be >= 0")
        self._pools[MemoryPoolType(pool)] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self._pools.get(MemoryPoolType(pool), 24 * 1024**3)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    @property
    def DLA_core(self) -> int:
        return -1

    @property
    def default_device_type(self) -> DeviceType:
        return DeviceType.GPU

    @property
    def int8_calibrator(self):
        return None

    @property
    def profiling_verbosity(self) -> ProfilingVerbosity:
        return self._verbosity

    @profiling_verbosity.setter
    def profiling_verbosity(self, verbosity: ProfilingVerbosity) -> None:
        self._verbosity = ProfilingVerbosity(verbosity)

    @property
    def builder_optimization_level(self) -> int:
        return self._level

    @builder_optimization_level.setter
    def builder_optimization_level(self, level: int) -> None:
        if not 0 <= int(level) <= 5:
            raise ValueError("builder optimization level must be within 0-5")
        self._level = int(level)

    @property
    def progress_monitor(self) -> IProgressMonitor | None:
        return self._monitor

    @progress_monitor.setter
    def progress_monitor(self, monitor: IProgressMonitor | None) -> None:
        self._monitor = monitor

    @property
    def num_compute_capabilities(self) -> int:
        return len(self._capabilities)

    @num_compute_capabilities.setter
    def num_compute_capabilities(self, n: int) -> None:
        self._capabilities = [ComputeCapability.NONE] * int(n)

    def set_compute_capability(self, compute_capability: ComputeCapability, index: int) -> bool:
        capability = ComputeCapability(compute_capability)
        if not 0 <= index < len(self._capabilities) or capability == ComputeCapability.NONE or (
                capability == ComputeCapability.CURRENT and len(self._capabilities) != 1):
            error(self._logger, "IBuilderConfig::setComputeCapability: Error Code 3: API Usage Error "
                                "(Parameter check failed)")
            return False
        self._capabilities[index] = capability
        return True

    def get_compute_capability(self, index: int) -> ComputeCapability:
        if not 0 <= index < len(self._capabilities):
            error(self._logger, "IBuilderConfig::getComputeCapability: Error Code 3: API Usage Error")
            return ComputeCapability.NONE
        return self._capabilities[index]

    def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
        data = bytes(serialized_timing_cache)
        if not data:
            return ITimingCache(set(), State.device)
        if not data.startswith(CACHE_MAGIC):
            error(self._logger, "Invalid timing cache: magic tag does not match")
            return ITimingCache(set(), State.device)
        body = json.loads(data[len(CACHE_MAGIC):])
        return ITimingCache(set(body["entries"]), body["device"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache._device != State.device and not ignore_mismatch:
            error(self._logger, "timing cache was created on another device")
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing_cache


def _targets(config: IBuilderConfig, logger: ILogger) -> list[str] | None:
    """The GPUs a plan will run on: this one, or (TensorRT for RTX) the capabilities configured."""
    capabilities = config._capabilities
    if State.flavor.rtx and capabilities and ComputeCapability.CURRENT not in capabilities:
        if ComputeCapability.NONE in capabilities:
            error(logger, "IBuilder::buildSerializedNetwork: Error Code 3: compute capability not set")
            return None
        return [f"sm_{int(c)}" for c in capabilities]
    if State.device is None:
        error(logger, "[checkMacros.cpp::catchCudaError::250] Error Code 1: Cuda Runtime (cudaError 35: CUDA driver "
                      "version is insufficient for CUDA runtime version)")
        return None
    return [State.device]


class Builder(_Strict):
    def __init__(self, logger: ILogger):
        self._logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self._logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _refuse(self, message: str) -> None:
        error(self._logger, message)
        return None

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        if network._onnx is None:
            return self._refuse("Network must have at least one output")
        precision_flags = sorted(config._flags & {"FP16", "BF16", "INT8"})
        if network._strongly_typed and precision_flags:
            return self._refuse(f"IBuilder::buildSerializedNetwork: Error Code 3: API Usage Error (BuilderFlag "
                                f"{precision_flags[0]} cannot be used with a strongly typed network)")
        targets = _targets(config, self._logger)
        if targets is None:
            return None
        if "REFIT" in config._flags and State.flavor.rtx and State.device is None:
            # what TensorRT for RTX 1.7 says when asked for a refittable engine without a GPU
            return self._refuse("[myelin] CHECK(status == CUDA_SUCCESS) failed")
        dynamic = [t for t in network._inputs if -1 in t.shape]
        if dynamic and not config._profiles:
            return self._refuse("Network has dynamic or shape inputs, but no optimization profile has been defined.")
        shapes: dict[str, list] = {}
        for t in network._inputs:
            for p in config._profiles:
                if t.name not in p._shapes:
                    if -1 in t.shape:
                        return self._refuse(f"Optimization profile is missing values for input {t.name}")
                    continue
                for s in p._shapes[t.name]:
                    if len(s) != len(t.shape) or any(d != -1 and d != v for d, v in zip(t.shape, s)):
                        return self._refuse(f"{t.name}: profile dimensions {s} are inconsistent with the network's "
                                            f"{t.shape}")
            shapes[t.name] = [list(map(list, config._profiles[0]._shapes.get(t.name, (t.shape,) * 3)))]
        if not self._monitored(config):
            return self._refuse("Build was cancelled by the progress monitor.")
        if config._timing_cache is not None:
            keys = {hashlib.sha256(network._onnx + json.dumps(shapes).encode() + str(i).encode()).hexdigest()[:16]
                    for i in range(4)}
            count("timing_cache_hits", len(keys & config._timing_cache._entries))
            config._timing_cache._entries |= keys
        header = {"library": State.flavor.library, "version": State.flavor.version, "targets": targets,
                  "strongly_typed": network._strongly_typed, "shapes": shapes, "flags": sorted(config._flags),
                  "workspace": config._pools.get(MemoryPoolType.WORKSPACE), "level": config._level}
        count("builds")
        return pack_plan(header, network._onnx)

    @staticmethod
    def _monitored(config: IBuilderConfig, steps: int = 4) -> bool:
        """Report phases of steps to the progress monitor; False when it asked to stop."""
        monitor = config._monitor
        if monitor is None:
            return True
        monitor.phase_start("Building engine", None, steps)
        for step in range(steps):
            monitor.phase_start("Timing tactics", "Building engine", 2)
            keep = monitor.step_complete("Timing tactics", 0) and monitor.step_complete("Timing tactics", 1)
            monitor.phase_finish("Timing tactics")
            if not keep or not monitor.step_complete("Building engine", step):
                monitor.phase_finish("Building engine")
                return False
        monitor.phase_finish("Building engine")
        return True
