"""A TensorRT logger that keeps the errors (to say why a build or load failed, once) and passes
warnings to Python logging instead of printing them on every call."""
from __future__ import annotations

import logging
from types import ModuleType

MAX_KEPT = 20
log = logging.getLogger("trt_core.tensorrt")
# What TensorRT for RTX logs as errors while it builds on a machine without a GPU (or its driver):
# expected there, and the build goes on.
NO_GPU_ERRORS = ("CUDA driver version is insufficient", "no CUDA-capable device is detected")
# A warning TensorRT gives, then builds anyway, when a profile's end cannot run ("Profile kMAX
# values are not self-consistent ... tensor volume exceeds ..."): the engine would fail there.
PROFILE_WARNING = "values are not self-consistent"


def make_logger(trt: ModuleType, without_gpu: bool = False):
    severity = trt.ILogger.Severity
    errors = (severity.INTERNAL_ERROR, severity.ERROR)

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []
            self.profile_problems: list[str] = []

        def log(self, level, msg):
            if level in errors and without_gpu and any(text in msg for text in NO_GPU_ERRORS):
                log.debug("TensorRT (no GPU here, expected): %s", msg)
            elif level in errors:
                if len(self.errors) < MAX_KEPT:
                    self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif level == severity.WARNING:
                if PROFILE_WARNING in msg and len(self.profile_problems) < MAX_KEPT:
                    self.profile_problems.append(str(msg))
                log.warning("TensorRT: %s", msg)

        def take_errors(self) -> str:
            text = "; ".join(self.errors) or "no details from TensorRT"
            self.errors.clear()
            return text

    return CollectingLogger()
