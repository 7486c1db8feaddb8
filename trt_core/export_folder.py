"""Where an export may be written, and how it takes the place of an earlier one.

An export goes only into a new folder, an empty one, or a folder that holds an earlier export of
ours and nothing else. Ours is told by its weights record (`unet.weights.json`, whose "format" is
this extension's) beside nothing but the files an export writes, never by the folder's name: a
user's folder, `.`, a workspace or a home folder is refused, and nothing in it is touched.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import time
from pathlib import Path

from sd_unet_trt.errors import UserError
from sd_unet_trt.trt_core.weights import FORMAT, RECORD_NAME

ONNX_NAME = "unet.onnx"
DATA_NAME = "unet.onnx.data"
EXPORT_FILES = (DATA_NAME, ONNX_NAME, RECORD_NAME)  # moved in this order: the record, the marker, last
RECORD_LIMIT = 256 * 1024**2  # a weights record is a few MB even for SDXL; more is not one of ours


class FolderRefused(UserError, RuntimeError):
    """The folder holds what this extension did not write; nothing was changed."""


def is_our_export(folder: Path) -> bool:
    """Whether `folder` is a real folder holding an export of this extension and nothing else."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    entries = list(folder.iterdir())
    if not all(p.name in EXPORT_FILES and p.is_file() and not p.is_symlink() for p in entries):
        return False
    record = folder / RECORD_NAME
    if record not in entries or record.stat().st_size > RECORD_LIMIT:
        return False
    try:  # a damaged record of ours still says it is ours: the export is made again in its place
        return json.loads(record.read_bytes()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def is_empty_folder(folder: Path) -> bool:
    return folder.is_dir() and not folder.is_symlink() and next(folder.iterdir(), None) is None


def writable(out_dir: Path | str) -> Path:
    """The absolute folder an export may be written to; FolderRefused, in one line, when it is a
    link, a file, or a folder holding anything but an earlier export of ours."""
    folder = Path(os.path.abspath(out_dir))  # `.` and `..` as the folders they name
    if folder.is_symlink():
        raise FolderRefused(f"{folder} is a symbolic link; choose another folder for the export (a new or empty one)")
    if not folder.exists():
        return folder
    if not folder.is_dir():
        raise FolderRefused(f"{folder} is a file; choose another folder for the export (a new or empty one)")
    if is_empty_folder(folder) or is_our_export(folder):
        return folder
    raise FolderRefused(f"{folder} holds files that are not an export of this extension; choose another folder "
                        f"for the export (a new or empty one)")


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False where the kernel, the C
    library or the file system does not offer it."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def put_in_place(new: Path, out_dir: Path, work: Path) -> None:
    """Move the finished export `new` to `out_dir`, checked again as `writable` checks it (the folder
    may have changed while the export ran). `work` is a temp folder beside `out_dir` that the
    caller removes, with whatever this leaves in it.

    What "atomic" means here: POSIX rename() replaces a folder only by an empty one, so
    - a new folder is renamed into place whole;
    - an empty folder is kept (its owner, permissions, and a shell or mount that sits in it) and
      the files are moved into it one by one, the weights record last: until it is there the
      folder is no export of ours;
    - an earlier export of ours is swapped with the new one in one step (RENAME_EXCHANGE), so a
      reader finds the old or the new one, never neither; where that is not offered, the old one
      is renamed into `work` and the new one into place right after (two renames' time without
      either), and the old one is put back if the second rename fails.
    """
    writable(out_dir)
    if not out_dir.exists():
        os.replace(new, out_dir)
    elif is_empty_folder(out_dir):
        for name in EXPORT_FILES:
            if (new / name).exists():
                os.replace(new / name, out_dir / name)
        _fsync_dir(out_dir)
        return
    elif not exchange(new, out_dir):
        previous = work / "previous"
        os.replace(out_dir, previous)
        try:
            os.replace(new, out_dir)
        except BaseException:
            os.replace(previous, out_dir)
            raise
    _fsync_dir(out_dir.parent)


def set_aside(folder: Path) -> Path:
    """Rename a folder that is in the way but cannot be proven ours (e.g. an export of an older
    version, made before exports had a weights record) to a free name beside it; nothing is deleted."""
    kept = folder.with_name(f"{folder.name}.kept-{time.strftime('%Y%m%d-%H%M%S')}")
    while kept.exists():
        kept = kept.with_name(kept.name + "-")
    os.rename(folder, kept)
    return kept
