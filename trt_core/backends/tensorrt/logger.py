"""A TensorRT logger that keeps the errors (to say why a build or load failed, once) and passes
warnings to Python logging instead of printing them on every call."""
from __future__ import annotations

import logging
from types import ModuleType

MAX_KEPT = 20
log = logging.getLogger("trt_core.tensorrt")


def make_logger(trt: ModuleType):
    severity = trt.ILogger.Severity
    errors = (severity.INTERNAL_ERROR, severity.ERROR)

    class CollectingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, level, msg):
            if level in errors:
                if len(self.errors) < MAX_KEPT:
                    self.errors.append(str(msg))
                log.error("TensorRT: %s", msg)
            elif level == severity.WARNING:
                log.warning("TensorRT: %s", msg)

        def take_errors(self) -> str:
            text = "; ".join(self.errors) or "no details from TensorRT"
            self.errors.clear()
            return text

    return CollectingLogger()
