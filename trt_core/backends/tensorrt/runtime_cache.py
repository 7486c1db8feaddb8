"""TensorRT for RTX's runtime cache: the kernels it compiled just in time on this GPU, kept in a
file beside the engine so that the next start skips the compile.

One file per engine and GPU model (the library refuses a cache of another GPU, driver major or
version, and we would overwrite a good file with an empty one if two GPUs shared a name). Written
atomically; a damaged or foreign file is replaced, never fatal. The engine's companions are
removed with it (`<engine file>.*`).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from sd_unet_trt.trt_core.atomic import atomic_write_bytes

log = logging.getLogger(__name__)
SUFFIX = ".runtime-cache"


def runtime_cache_path(engine_path: Path, gpu_arch: str, gpu_name: str) -> Path:
    """`<engine>.sm_89-NVIDIA-GeForce-RTX-4090.runtime-cache`, beside the engine."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-") or "gpu"
    engine_path = Path(engine_path)
    return engine_path.with_name(f"{engine_path.name}.{gpu_arch}-{name}{SUFFIX}")


@dataclass
class RuntimeCacheFile:
    path: Path
    saved_size: int = -1  # size of what was last read or written: saves only when kernels were added

    def load_into(self, cache) -> None:
        """Fill the library's cache object from the file, if there is a usable one."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("TensorRT for RTX: cannot read its runtime cache %s (%s); compiling afresh", self.path.name, e)
            return
        if cache.deserialize(data):
            self.saved_size = len(data)
        else:
            log.warning("TensorRT for RTX: runtime cache %s is from another GPU, driver or version; it will be "
                        "replaced", self.path.name)

    def save(self, cache) -> None:
        """Write the cache when it grew; a failure (full disk, read-only folder) costs only the next
        start's compile."""
        data = bytes(memoryview(cache.serialize()))
        if len(data) == self.saved_size:
            return
        try:
            atomic_write_bytes(self.path, data)
        except OSError as e:
            log.warning("TensorRT for RTX: could not save its runtime cache %s (%s)", self.path.name, e)
            return
        self.saved_size = len(data)
