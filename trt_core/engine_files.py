"""Which files in the engine folder this project can prove it wrote, so that removing an engine
touches nothing else: the engine file when its sha256 is the one recorded at build, its sidecar
when it describes that entry, its runtime caches by the name pattern they are written under, and a
weights record when it is one of ours with that digest. A user's file that merely has such a name
is left where it is."""
from __future__ import annotations

import json
import re
from pathlib import Path

from sd_unet_trt.trt_core.file_digest import digest_of
from sd_unet_trt.trt_core.weights import FORMAT as WEIGHTS_FORMAT

# trt_core.backends.tensorrt.runtime_cache writes `<engine>.<gpu arch>-<gpu name>.runtime-cache`
RUNTIME_CACHE = r"\.[A-Za-z0-9_]+-[A-Za-z0-9-]+\.runtime-cache"
JSON_LIMIT = 64 * 1024**2  # a sidecar or weights record is far smaller: a bigger file is not ours


def _json(path: Path):
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > JSON_LIMIT:
            return None
        return json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None


def is_runtime_cache(engine: Path, path: Path) -> bool:
    return (re.fullmatch(re.escape(engine.name) + RUNTIME_CACHE, path.name) is not None
            and path.is_file() and not path.is_symlink())


def is_sidecar_of(path: Path, entry_id: str, file: str) -> bool:
    data = _json(path)
    return isinstance(data, dict) and data.get("id") == entry_id and data.get("file") == file


def is_weights_record(path: Path, digest: str) -> bool:
    data = _json(path)
    return isinstance(data, dict) and data.get("format") == WEIGHTS_FORMAT and data.get("digest") == digest


def why_not_the_engine_built(path: Path, sha256: str) -> str:
    """"" when `path` is the engine file that was built (its recorded sha256); else why it is kept."""
    if not sha256:
        return "it was built before engine files were fingerprinted, so it cannot be told from another file"
    try:
        if path.is_file() and not path.is_symlink() and digest_of(path) == sha256:
            return ""
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    return "it is not the engine file that was built (its sha256 differs)"
