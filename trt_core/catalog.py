"""What the manifest holds, with each engine's status on this machine, and routers built from it."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from models.families import UnsupportedModelError, family_named
from trt_core.backends import get_backend
from trt_core.backends.base import BackendUnavailable
from trt_core.manifest import EngineEntry, EngineStatus, Manifest, engine_status
from trt_core.pipeline import Workspace
from trt_core.router import EngineRecord, Router


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


def router_for_checkpoint(workspace: Workspace, sha256: str, device: str = "cuda",
                          memory_budget_bytes: int | None = None) -> tuple[Router, list[CatalogItem]]:
    """A router over the checkpoint's ready engines; also the ones left out and why."""
    manifest = workspace.manifest()
    records, left_out = [], []
    for item in catalog(workspace, device):
        entry = item.entry
        if entry.checkpoint.sha256 != sha256:
            continue
        if not item.status.ready:
            left_out.append(item)
            continue

        def load(entry: EngineEntry = entry):
            return get_backend(entry.backend).load(manifest.file_path(entry), entry.id, family_named(entry.family),
                                                   entry.profile, device=device)
        records.append(EngineRecord(entry.id, family_named(entry.family), entry.profile, load,
                                    label=f"[{entry.backend} {entry.precision}] {entry.profile.label()}"))
    return Router(records, memory_budget_bytes), left_out
