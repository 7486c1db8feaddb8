"""What the manifest holds, with each engine's status on this machine, and routers built from it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sd_unet_trt.models.families import CONTROLNET_SUFFIX, UnsupportedModelError, family_named
from sd_unet_trt.trt_core.backends import REGISTRY, get_backend
from sd_unet_trt.trt_core.backends.base import Backend, BackendUnavailable, Engine
from sd_unet_trt.trt_core.controlnet.family import family_of_entry, is_controlnet_entry
from sd_unet_trt.trt_core.file_digest import require_built_file
from sd_unet_trt.trt_core.manifest import EngineEntry, EngineStatus, Manifest, engine_status
from sd_unet_trt.trt_core.router import EngineRecord, Router
from sd_unet_trt.trt_core.workspace import Workspace


@dataclass
class CatalogItem:
    entry: EngineEntry
    status: EngineStatus


def installed_backend(name: str) -> Backend | None:
    """The process's instance of the backend (backends.get_backend), or None when it is unknown or
    its module does not import."""
    try:
        return get_backend(name)
    except (ImportError, BackendUnavailable):
        return None


def status_here(entry: EngineEntry, manifest: Manifest, backend: Backend | None, device: str) -> EngineStatus:
    """What the manifest says, then what the backend says of running the file here."""
    available = backend is not None and backend.availability().available
    status = engine_status(entry, manifest, backend.version() if available else None,
                           backend.device_arch(device) if available else None)
    if not status.ready:
        return status
    path = manifest.file_path(entry)
    if not entry.file_sha256:
        return EngineStatus("stale", f"{entry.file} was built before engine files were fingerprinted; rebuild it")
    if path.stat().st_size != entry.file_size:  # the full sha256 is checked when it loads
        return EngineStatus("stale", f"{entry.file} changed size since it was built (changed or damaged); rebuild it")
    reason = backend.can_run(device)
    if reason:
        return EngineStatus("cannot-run", reason)
    reason = backend.file_problem(path, device)
    return EngineStatus("stale", reason) if reason else status


def built_file(manifest: Manifest, entry: EngineEntry) -> Path:
    """The entry's file, once its sha256 shows it is the file that was built (UntrustedFile if not)."""
    return require_built_file(manifest.file_path(entry), entry.file_sha256, entry.file_size)


def catalog(workspace: Workspace, device: str = "cuda") -> list[CatalogItem]:
    manifest = workspace.manifest()
    items = []
    for entry in manifest.entries():
        status = status_here(entry, manifest, installed_backend(entry.backend), device)
        try:
            family_of_entry(entry) if is_controlnet_entry(entry) else family_named(entry.family)
        except (UnsupportedModelError, ValueError) as e:
            status = EngineStatus("stale", str(e))
        items.append(CatalogItem(entry, status))
    return items


def engine_label(entry: EngineEntry) -> str:
    inputs = ", ControlNet" if entry.family.endswith(CONTROLNET_SUFFIX) else ""
    return f"[{entry.backend} {entry.precision}{inputs}] {entry.profile.label()}"


def router_for_checkpoint(workspace: Workspace, sha256: str, device: str = "cuda",
                          memory_budget_bytes: int | None = None, preferred_backend: str | None = None,
                          backend_options: dict | None = None) -> tuple[Router, list[CatalogItem]]:
    """A router over the checkpoint's ready engines, loaded lazily on first use by the process's
    backend instances with `backend_options` (e.g. cuda_graphs); also the ones left out and why.
    The preferred backend's engines come first, so the router picks them when several engines
    cover a call equally well."""
    manifest = workspace.manifest()
    order = [preferred_backend] + [b for b in REGISTRY if b != preferred_backend] if preferred_backend in REGISTRY else list(REGISTRY)
    ready, left_out = [], []
    for item in catalog(workspace, device):
        if item.entry.checkpoint.sha256 != sha256 or is_controlnet_entry(item.entry):  # a ControlNet's: never a UNet's
            continue
        (ready if item.status.ready else left_out).append(item)
    ready.sort(key=lambda item: order.index(item.entry.backend) if item.entry.backend in order else len(order))

    def loader(entry: EngineEntry) -> Callable[[], Engine]:
        def load() -> Engine:
            backend = get_backend(entry.backend, **(backend_options or {}))
            return backend.load(built_file(manifest, entry), entry.id, family_named(entry.family), entry.profile,
                                device=device)
        return load
    records = [EngineRecord(item.entry.id, family_named(item.entry.family), item.entry.profile, loader(item.entry),
                            label=engine_label(item.entry), weights=item.entry.checkpoint.weights) for item in ready]
    return Router(records, memory_budget_bytes), left_out
