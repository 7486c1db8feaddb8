"""Enums, the logger and progress-monitor interfaces, and host memory, as the bindings define them."""
from __future__ import annotations

import enum

import numpy as np


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    BF16 = 7
    INT64 = 8


ONNX_TO_DTYPE = {1: DataType.FLOAT, 10: DataType.HALF, 16: DataType.BF16, 6: DataType.INT32, 7: DataType.INT64,
                 9: DataType.BOOL, 2: DataType.UINT8, 3: DataType.INT8}
NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32,
         DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT8: np.int8}


def nptype(dtype: DataType):
    return NUMPY[dtype]


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class DeviceType(enum.IntEnum):
    GPU = 0
    DLA = 1


class ProfilingVerbosity(enum.IntEnum):
    LAYER_NAMES_ONLY = 0
    NONE = 1
    DETAILED = 2


class WeakBuilderFlag(enum.IntEnum):
    """BuilderFlag of TensorRT 10: precision flags for weakly typed networks."""
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    REFIT = 4
    TF32 = 6
    BF16 = 17


class StrongBuilderFlag(enum.IntEnum):
    """BuilderFlag of TensorRT 11 and TensorRT for RTX: no precision flags."""
    DEBUG = 2
    REFIT = 4
    TF32 = 6


class NetworkDefinitionCreationFlag10(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class NetworkDefinitionCreationFlag11(enum.IntEnum):
    STRONGLY_TYPED = 1  # EXPLICIT_BATCH is gone


class NetworkDefinitionCreationFlagRTX(enum.IntEnum):
    STRONGLY_TYPED = 0


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


# TensorRT for RTX only
class ComputeCapability(enum.IntEnum):
    NONE = 0
    CURRENT = 1
    SM75 = 75
    SM80 = 80
    SM86 = 86
    SM89 = 89
    SM120 = 120
    SM121 = 121


class EngineValidity(enum.IntEnum):
    VALID = 0
    SUBOPTIMAL = 1
    INVALID = 2


class CudaGraphStrategy(enum.IntEnum):
    DISABLED = 0
    WHOLE_GRAPH_CAPTURE = 1


class DynamicShapesKernelSpecializationStrategy(enum.IntEnum):
    LAZY = 0
    EAGER = 1
    NONE = 2


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        pass

    def log(self, severity: "ILogger.Severity", msg: str) -> None:
        raise NotImplementedError


class Logger(ILogger):
    INTERNAL_ERROR = ILogger.Severity.INTERNAL_ERROR
    ERROR = ILogger.Severity.ERROR
    WARNING = ILogger.Severity.WARNING
    INFO = ILogger.Severity.INFO
    VERBOSE = ILogger.Severity.VERBOSE

    def __init__(self, min_severity: ILogger.Severity = ILogger.Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        pass


def error(logger: ILogger, msg: str) -> None:
    logger.log(ILogger.Severity.ERROR, msg)


class IProgressMonitor:
    def __init__(self) -> None:
        pass

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        raise NotImplementedError

    def step_complete(self, phase_name: str, step: int) -> bool:
        raise NotImplementedError

    def phase_finish(self, phase_name: str) -> None:
        raise NotImplementedError


class IHostMemory(bytes):
    """Serialized data; supports the buffer protocol like the real one."""

    @property
    def nbytes(self) -> int:
        return len(self)
