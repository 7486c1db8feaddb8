"""A Ctrl-C stops the program; it never passes for a missing or broken library.

Code that asks whether a library imports catches ImportError (or any Exception, for installs that
fail with OSError). An interrupt can reach it in that guise: pybind11 turns any exception raised
while an extension module initializes, a KeyboardInterrupt included, into
ImportError("initialization failed") caused by it (ONNX Runtime's and TensorRT's bindings are such
modules; Ctrl-C during `import onnxruntime` was reported as "ONNX Runtime is not installed")."""
from __future__ import annotations

# The command line's answer to Ctrl-C; its exit code is the shell's for SIGINT (128 + 2).
INTERRUPTED_LINE = "interrupted; nothing half-written was kept"
INTERRUPTED_EXIT = 130


def raise_if_interrupted(error: BaseException) -> None:
    """Raise KeyboardInterrupt (from `error`) when `error` was caused by one, however deep."""
    seen: set[int] = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt() from error
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
