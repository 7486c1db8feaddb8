"""Every failure of a command as an exit code and one line for stderr."""
from __future__ import annotations

import errno

from sd_unet_trt.errors import UserError
from sd_unet_trt.trt_core.atomic import disk_full
from sd_unet_trt.trt_core.interrupts import INTERRUPTED_EXIT, INTERRUPTED_LINE
from sd_unet_trt.trt_core.progress import BuildCancelled


class CliError(UserError, RuntimeError):
    """A user-facing failure: printed as one line, exit code 2."""


# Failures printed as they are: every UserError, a cancel, and a bad value met while parsing input.
EXPECTED = (UserError, BuildCancelled, ValueError)


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def exit_code_and_line(error: BaseException) -> tuple[int, str]:
    if isinstance(error, KeyboardInterrupt):
        return INTERRUPTED_EXIT, INTERRUPTED_LINE
    if isinstance(error, KeyError):  # `remove` of an unknown id
        return 2, f"error: {one_line(error.args[0] if error.args else error)}"
    if isinstance(error, OSError) and disk_full(error):
        where = error.filename or "the output folder"
        return 2, f"error: disk full while writing {where}; nothing was changed"
    if isinstance(error, EXPECTED):
        return 2, f"error: {one_line(error)}"
    if isinstance(error, OSError):
        what = errno.errorcode.get(error.errno or 0, type(error).__name__)
        return 2, f"error: {one_line(error.strerror or error)} ({what}){f': {error.filename}' if error.filename else ''}"
    return 3, f"error: unexpected {type(error).__name__}: {one_line(error)} (run with -v for the traceback)"
