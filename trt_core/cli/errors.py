"""Every failure of a command as an exit code and one line for stderr."""
from __future__ import annotations

import errno

from sd_unet_trt.models.families import UnsupportedModelError
from sd_unet_trt.trt_core.atomic import DiskFullError, disk_full
from sd_unet_trt.trt_core.backends.base import BackendUnavailable
from sd_unet_trt.trt_core.checkpoint_file import CheckpointError
from sd_unet_trt.trt_core.export import ExportError
from sd_unet_trt.trt_core.export_folder import FolderRefused
from sd_unet_trt.trt_core.interrupts import INTERRUPTED_EXIT, INTERRUPTED_LINE
from sd_unet_trt.trt_core.manifest import ManifestError
from sd_unet_trt.trt_core.pipeline import BuildBusy
from sd_unet_trt.trt_core.profiles import ProfileError
from sd_unet_trt.trt_core.progress import BuildCancelled
from sd_unet_trt.trt_core.verify import VerificationError


class CliError(RuntimeError):
    """A user-facing failure: printed as one line, exit code 2."""


# Failures with a message meant for the user, as it is.
EXPECTED = (CliError, BackendUnavailable, BuildBusy, BuildCancelled, CheckpointError, DiskFullError, ExportError,
            FolderRefused, ManifestError, ProfileError, UnsupportedModelError, VerificationError, ValueError)


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
