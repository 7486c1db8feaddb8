"""Engine files are loaded only if they are the files this project built: their sha256 is recorded
in the manifest at build time and checked before a backend reads them. A torch-backend engine is
unpickled when loaded (it is code), a TensorRT plan can carry plugins, and a damaged file should
fall back with a reason rather than crash or compute garbage.

Hashing a 5 GB SDXL engine takes seconds, so a check is remembered for the file's size and
modification time, per process: a file that still has both was verified already."""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from sd_unet_trt.errors import UserError
from sd_unet_trt.trt_core.progress import ProgressFn, no_progress

CHUNK = 1 << 22
_verified: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256
_lock = threading.Lock()


class UntrustedFile(UserError, ValueError):
    """The file is not the one this project built (changed, damaged, or from elsewhere)."""


def file_sha256(path: Path | str, progress: ProgressFn = no_progress) -> str:
    """The file's sha256 (the project's one way to hash a file: checkpoints and engines alike);
    progress gets the fraction read, for a checkpoint of several GB."""
    path = Path(path)
    total, done = max(path.stat().st_size, 1), 0
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            done += len(chunk)
            progress(f"hashing {path.name}", done / total)
    return digest.hexdigest()


def _stamp(path: Path) -> tuple[str, int, int]:
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def digest_of(path: Path) -> str:
    """The file's sha256, computed once per size and modification time."""
    key = _stamp(path)
    with _lock:
        known = _verified.get(key)
    if known is None:
        known = file_sha256(path)
        with _lock:
            _verified[key] = known
    return known


def file_problem(path: Path, expected_sha256: str, expected_size: int) -> str:
    """Why the file may not be loaded ("" when it is the one built)."""
    name = Path(path).name
    if not expected_sha256:
        return f"{name} was built before engine files were fingerprinted; rebuild it"
    if Path(path).is_symlink():  # whatever it points to is not ours to load
        return f"{name} is a symbolic link, not the engine file that was built; remove it and rebuild"
    try:
        size = os.stat(path).st_size
    except OSError as e:
        return f"{name} cannot be read ({e.strerror})"
    if size != expected_size:
        return f"{name} is {size} bytes, the engine built was {expected_size}: it was changed or damaged; rebuild it"
    if digest_of(path) != expected_sha256:
        return f"{name} is not the file that was built (its sha256 differs): changed or damaged; rebuild it"
    return ""


def require_built_file(path: Path, expected_sha256: str, expected_size: int) -> Path:
    problem = file_problem(path, expected_sha256, expected_size)
    if problem:
        raise UntrustedFile(problem)
    return path
