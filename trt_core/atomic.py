"""Atomic file output: write beside the target, fsync, rename. A crash or a full disk leaves either
the old file or the new one, plus at most a temp file that `remove_stale_temps` clears."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

TEMP_MARK = ".partial-"


class DiskFullError(OSError):
    pass


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
        if e.errno == errno.ENOSPC:
            raise DiskFullError(errno.ENOSPC, f"disk full while writing {path}; nothing was changed") from e
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _writer_pid(temp: Path) -> int | None:
    try:
        return int(temp.name[len(TEMP_MARK):].split("-", 1)[0])
    except ValueError:
        return None


def remove_stale_temps(directory: Path | str) -> list[Path]:
    """Remove temp files and folders whose writer process is gone (a killed build), never a live writer's."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.name.startswith(TEMP_MARK)
             and (_writer_pid(p) is None or not _pid_alive(_writer_pid(p)))]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale
