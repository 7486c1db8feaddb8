"""Atomic file output: write beside the target, fsync, rename. A crash or a full disk leaves either
the old file or the new one, plus at most a temp file that `remove_stale_temps` clears. And the
reading side of the JSON files written so: `read_tagged_json`."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sd_unet_trt.errors import UserError

TEMP_MARK = ".partial-"


# "No space left", "file too large" (a size limit, e.g. ulimit -f) and "quota exceeded": the disk is full for us
FULL_ERRNOS = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class DiskFullError(UserError, OSError):
    def __str__(self) -> str:  # the sentence, without "[Errno 28]" and the path again
        return self.strerror or super().__str__()


def disk_full(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in FULL_ERRNOS


NEARLY_FULL = 64 * 1024**2  # free bytes below which a failed write is taken for a full disk


def as_disk_full(error: BaseException, folder: Path) -> DiskFullError | None:
    """The failure as a DiskFullError when the disk is what failed: an ENOSPC/EFBIG anywhere, or any
    error while `folder`'s disk is nearly full (libraries word it otherwise, e.g. "Protobuf
    serialization failed"). None when the disk is not to blame."""
    if isinstance(error, DiskFullError):
        return None
    if disk_full(error):
        where = getattr(error, "filename", None) or folder
        return DiskFullError(error.errno, f"disk full while writing {where}; nothing was changed", str(where))
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free < NEARLY_FULL:
        return DiskFullError(errno.ENOSPC, f"disk full in {folder} ({free // 1024**2} MiB left) and the build failed "
                                           f"({type(error).__name__}: {str(error)[:120]}); nothing was changed",
                             str(folder))
    return None


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path: Path | str) -> Iterator[Path]:
    """Yield a temp path next to `path`; on clean exit it replaces `path`, otherwise it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_MARK}{os.getpid()}-{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; engines are ordinary shared files
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if disk_full(e):
            raise DiskFullError(e.errno, f"disk full while writing {path}; nothing was changed", str(path)) from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def staged_output(path: Path | str) -> Iterator[Path]:
    """Yield a temp path next to `path`, for the caller to fill and then move into place itself
    (e.g. under a lock, with `fsync_file` first); whatever is still there when the block ends is
    removed, and a full disk is reported as such."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{TEMP_MARK}{os.getpid()}-{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o644)
    try:
        yield tmp
    except OSError as e:
        if disk_full(e) and not isinstance(e, DiskFullError):
            raise DiskFullError(e.errno, f"disk full while writing {path}; nothing was changed", str(path)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class UnreadableJson(ValueError):
    """The document cannot be read as UTF-8 JSON; the message says why."""


class NestedTooDeeply(UnreadableJson):
    """The document nests deeper than Python's parser goes: a hostile file, not a damaged one."""


class ForeignJson(ValueError):
    """The document is JSON but not an object with the expected tag; `found` is its tag (None: none)."""

    def __init__(self, found: Any):
        super().__init__(f"tag {found!r}")
        self.found = found


def read_tagged_json(source: Path | bytes, tag_key: str, tag: str) -> dict[str, Any]:
    """The JSON object in `source` (a file, or bytes read from an archive) whose `tag_key` is `tag`,
    the one check every reader of our formats makes before trusting a field. A missing file raises
    FileNotFoundError for the caller to word; any other failure UnreadableJson or ForeignJson."""
    try:
        data = json.loads((source.read_bytes() if isinstance(source, Path) else source).decode("utf-8"))
    except FileNotFoundError:
        raise
    except RecursionError:
        raise NestedTooDeeply("nested too deeply") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UnreadableJson(str(e)) from None
    found = data.get(tag_key) if isinstance(data, dict) else None
    if found != tag:
        raise ForeignJson(found)
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_pid(temp: Path) -> int | None:
    """The pid in a temp name of the pattern this module writes (`.partial-<pid>-<name>...`); None for
    any other name, a user's `.partial-notes.txt` say, which is no temp of ours."""
    pid, dash, rest = temp.name[len(TEMP_MARK):].partition("-")
    return int(pid) if temp.name.startswith(TEMP_MARK) and pid.isascii() and pid.isdigit() and dash and rest else None


def remove_stale_temps(directory: Path | str) -> list[Path]:
    """Remove temp files and folders whose writer process is gone (a killed build), never a live
    writer's, nor anything whose name is not of the pattern written here."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if _writer_pid(p) is not None and not _pid_alive(_writer_pid(p))]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale
