"""ONNX Runtime's own log, sent to ours.

onnx-graphsurgeon folds the exported graph through ONNX Runtime sessions of its own, made with ORT's
default logger: for a UNet its optimizer prints about 240 yellow "UnsqueezeElimination cannot
remove node" notes to stderr (the constants it folds are shared, so it keeps the node; the graph is
right). Routed here, ORT's warnings go to the `onnxruntime` logger at INFO, shown with -v; its
errors at WARNING, always shown. The callback is process-wide: it is installed by the export only.
"""
from __future__ import annotations

import logging

log = logging.getLogger("onnxruntime")
ORT_WARNING, ORT_ERROR = 2, 3  # ORT's severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal
_routed = False


def forward(severity: int, category: str, logid: str, code_location: str, message: str) -> None:
    log.log(logging.WARNING if severity >= ORT_ERROR else logging.INFO, "%s (%s)", message, code_location)


def route_onnxruntime_log() -> None:
    """Once per process. An ONNX Runtime without logger callbacks (before 1.23) keeps its own sink
    and shows errors only."""
    global _routed
    if _routed:
        return
    import onnxruntime
    if hasattr(onnxruntime, "set_default_logger_callback"):
        onnxruntime.set_default_logger_callback(forward, ORT_WARNING)
    else:
        onnxruntime.set_default_logger_severity(ORT_ERROR)
    _routed = True
