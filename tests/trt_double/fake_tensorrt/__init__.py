"""A strict test double of TensorRT's Python module, as `tensorrt` 10.x or 11.x or as `tensorrt_rtx`
1.x (its flavor), for machines where no TensorRT runtime can run.

Strict: it refuses what TensorRT refuses (execution before every input shape, tensor address and
the activation memory are set, shapes outside the profile, min > opt > max, a dynamic input
without a profile, precision flags on a strongly typed network, refit with unknown names or a wrong
number of values, bytes that are not an engine, an engine of another version or GPU, a refittable
or current-GPU build with TensorRT for RTX and no GPU, unknown attributes read or written, and the
members a version lacks). Real: a serialized "engine" holds the parsed ONNX and its profile;
`execute_async_v3` runs it with ONNX Runtime on host memory standing in for the device.

Every public name of a flavor (module attributes, classes, their public members, minus the
flavor's `absent`) exists in the real bindings: tests/test_tensorrt_api.py checks the TensorRT
flavors against the bindings wheels' string tables and the TensorRT for RTX flavor against the
real `tensorrt_rtx` module and its pybind11 signatures. One module object plays every flavor, so
that Polygraphy, which keeps the module it imported, follows a change. Test-only helpers start
with an underscore.
"""
from __future__ import annotations

from tests.trt_double.fake_tensorrt import _state
from tests.trt_double.fake_tensorrt._builder import (Builder, IBuilderConfig, IOptimizationProfile,
                                                     ITimingCache)
from tests.trt_double.fake_tensorrt._builder import plan_info as _plan_info
from tests.trt_double.fake_tensorrt._network import (ILayer, INetworkDefinition, ITensor, OnnxParser,
                                                     ParserError)
from tests.trt_double.fake_tensorrt._refit import Refitter, Weights
from tests.trt_double.fake_tensorrt._runtime import ICudaEngine, IExecutionContext, Runtime
from tests.trt_double.fake_tensorrt._runtime import IRuntimeCache as _IRuntimeCache
from tests.trt_double.fake_tensorrt._runtime import IRuntimeConfig as _IRuntimeConfig
from tests.trt_double.fake_tensorrt._state import FLAVORS as _FLAVORS
from tests.trt_double.fake_tensorrt._state import State as _State
from tests.trt_double.fake_tensorrt._types import (DataType, DeviceType, ExecutionContextAllocationStrategy,
                                                  IHostMemory, ILogger, IProgressMonitor, Logger, MemoryPoolType,
                                                  ProfilingVerbosity, TensorIOMode, nptype)
from tests.trt_double.fake_tensorrt import _types

__all__ = ["Builder", "IBuilderConfig", "IOptimizationProfile", "ITimingCache", "ILayer", "INetworkDefinition",
           "ITensor", "OnnxParser", "ParserError", "Refitter", "Weights", "ICudaEngine", "IExecutionContext", "Runtime",
           "DataType", "DeviceType", "ExecutionContextAllocationStrategy", "IHostMemory", "ILogger", "IProgressMonitor",
           "Logger", "MemoryPoolType", "ProfilingVerbosity", "TensorIOMode", "nptype", "init_libnvinfer_plugins",
           "_plan_info", "_state"]
__version__ = _State.flavor.version
_stats = _State.stats
_used_names = _State.used_names
# Module attributes only TensorRT for RTX has
_RTX_MODULE_NAMES = {"ComputeCapability": _types.ComputeCapability, "EngineValidity": _types.EngineValidity,
                     "CudaGraphStrategy": _types.CudaGraphStrategy,
                     "DynamicShapesKernelSpecializationStrategy": _types.DynamicShapesKernelSpecializationStrategy,
                     "IRuntimeConfig": _IRuntimeConfig, "IRuntimeCache": _IRuntimeCache}


def init_libnvinfer_plugins(logger, namespace: str) -> bool:
    return True


def _set_flavor(name: str, device: str | None = "sm_89") -> None:
    """Play `name` (a key of FLAVORS) on a GPU of `device` ("sm_89"; None: no GPU)."""
    global __version__, BuilderFlag, NetworkDefinitionCreationFlag
    flavor = _FLAVORS[name]
    _State.flavor, _State.device = flavor, device
    __version__ = flavor.version
    BuilderFlag = _types.StrongBuilderFlag if flavor.strongly_typed_only else _types.WeakBuilderFlag
    NetworkDefinitionCreationFlag = (_types.NetworkDefinitionCreationFlagRTX if flavor.rtx
                                     else _types.NetworkDefinitionCreationFlag11 if flavor.strongly_typed_only
                                     else _types.NetworkDefinitionCreationFlag10)
    for attr, value in _RTX_MODULE_NAMES.items():
        if flavor.rtx:
            globals()[attr] = value
        else:
            globals().pop(attr, None)


def _reset() -> None:
    _State.stats.clear()


_set_flavor("10")
