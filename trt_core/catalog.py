"""What the manifest holds, with each engine's status on this machine, and routers built from it."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from sd_unet_trt.models.families import UnsupportedModelError, family_named
from sd_unet_trt.trt_core.backends import REGISTRY, get_backend
from sd_unet_trt.trt_core.backends.base import Backend, BackendUnavailable, Engine
from sd_unet_trt.trt_core.manifest import EngineEntry, EngineStatus, engine_status
from sd_unet_trt.trt_core.pipeline import Workspace
from sd_unet_trt.trt_core.router import EngineRecord, Router


@dataclass
class CatalogItem:
    entry: EngineEntry
    status: EngineStatus


@lru_cache(maxsize=None)
def backend_identity(name: str, device: str) -> tuple[str | None, str | None]:
    """(version, device arch) of an installed backend, (None, None) when it is absent."""
    try:
        backend = get_backend(name)
        if not backend.availability().available:
            return None, None
        return backend.version(), backend.device_arch(device)
    except (ImportError, BackendUnavailable):
        return None, None


def catalog(workspace: Workspace, device: str = "cuda") -> list[CatalogItem]:
    manifest = workspace.manifest()
    items = []
    for entry in manifest.entries():
        version, arch = backend_identity(entry.backend, device)
        status = engine_status(entry, manifest, version, arch)
        try:
            family_named(entry.family)
        except UnsupportedModelError as e:
            status = EngineStatus("stale", str(e))
        items.append(CatalogItem(entry, status))
    return items


def engine_label(entry: EngineEntry) -> str:
    return f"[{entry.backend} {entry.precision}] {entry.profile.label()}"


def router_for_checkpoint(workspace: Workspace, sha256: str, device: str = "cuda",
                          memory_budget_bytes: int | None = None, preferred_backend: str | None = None,
                          make_backend: Callable[[str], Backend] = get_backend) -> tuple[Router, list[CatalogItem]]:
    """A router over the checkpoint's ready engines, loaded lazily on first use; also the ones
    left out and why. The preferred backend's engines come first, so the router picks them when
    several engines cover a call equally well."""
    manifest = workspace.manifest()
    order = [preferred_backend] + [b for b in REGISTRY if b != preferred_backend] if preferred_backend in REGISTRY else list(REGISTRY)
    ready, left_out = [], []
    for item in catalog(workspace, device):
        if item.entry.checkpoint.sha256 != sha256:
            continue
        (ready if item.status.ready else left_out).append(item)
    ready.sort(key=lambda item: order.index(item.entry.backend) if item.entry.backend in order else len(order))

    def loader(entry: EngineEntry) -> Callable[[], Engine]:
        return lambda: make_backend(entry.backend).load(manifest.file_path(entry), entry.id, family_named(entry.family),
                                                        entry.profile, device=device)
    records = [EngineRecord(item.entry.id, family_named(item.entry.family), item.entry.profile, loader(item.entry),
                            label=engine_label(item.entry), weights=item.entry.checkpoint.weights) for item in ready]
    return Router(records, memory_budget_bytes), left_out
