"""One TensorRT timing cache file per (GPU architecture, TensorRT version), shared by all builds.

Tactic timings are what makes a build slow; reusing them cuts later builds of the same model (and
of other profiles) substantially. The file is read and merged under a lock, so two builds (two
WebUI instances, or the CLI beside the WebUI) never lose each other's entries or read half a file.
"""
from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType

from filelock import FileLock, Timeout

from sd_unet_trt.trt_core.atomic import atomic_write_bytes

LOCK_TIMEOUT_S = 30
log = logging.getLogger(__name__)


def cache_path(directory: Path, gpu_arch: str, trt_version: str) -> Path:
    return Path(directory) / f"timing-{gpu_arch}-trt{trt_version}.cache"


class TimingCache:
    def __init__(self, trt: ModuleType, directory: Path, gpu_arch: str, trt_version: str):
        self.trt = trt
        self.path = cache_path(directory, gpu_arch, trt_version)
        self.lock = FileLock(str(self.path) + ".lock", timeout=LOCK_TIMEOUT_S)

    def _read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def attach(self, config, logger) -> str:
        """Give the builder config the cache (empty when none is usable); returns a note or "".
        TensorRT reports an unreadable cache through the logger, not by raising."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self.lock:
                data = self._read()
        except Timeout:
            data, note = b"", f"timing cache {self.path} is locked; building without its timings"
        else:
            note = ""
        errors_before = len(logger.errors)
        cache = config.create_timing_cache(data)
        unreadable = cache is None or len(logger.errors) > errors_before
        if data and (unreadable or not config.set_timing_cache(cache, False)):
            logger.errors[errors_before:] = []
            note = f"timing cache {self.path} does not match this GPU or TensorRT; starting a new one"
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
        elif not data:
            config.set_timing_cache(cache, False)
        if note:
            log.warning(note)
        return note

    def save(self, config) -> None:
        """Merge the build's timings into the file (another build may have added some meanwhile)."""
        cache = config.get_timing_cache()
        if cache is None:
            return
        try:
            with self.lock:
                on_disk = self._read()
                if on_disk:
                    other = config.create_timing_cache(on_disk)
                    if other is not None:
                        cache.combine(other, False)
                atomic_write_bytes(self.path, bytes(memoryview(cache.serialize())))
        except Timeout:
            log.warning("timing cache %s stayed locked; this build's timings were not saved", self.path)
