"""HTTP routes under /trt-unet/v1 (docs/WEBUI.md has curl examples)."""
from __future__ import annotations

import logging
from typing import Any

from fastapi import Body, FastAPI, HTTPException

from modules import sd_unet

from sd_unet_trt.models.families import UnsupportedModelError
from sd_unet_trt.trt_core import jobs
from sd_unet_trt.trt_core.backends import get_backend
from sd_unet_trt.trt_core.backends.base import BackendUnavailable
from sd_unet_trt.trt_core.catalog import catalog
from sd_unet_trt.trt_core.catalog import engine_label
from sd_unet_trt.trt_core.manifest import ManifestError
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import Profile, ProfileError, presets_for
from sd_unet_trt.scripts.trt_unet_webui.source import current_model, model_source, run_exclusive
from sd_unet_trt.ui.source import NoModelLoaded

log = logging.getLogger("sd_unet_trt")
PREFIX = "/trt-unet/v1"


def engine_json(item) -> dict[str, Any]:
    entry = item.entry
    return {"id": entry.id, "label": engine_label(entry), "checkpoint": entry.checkpoint.__dict__,
            "family": entry.family, "backend": entry.backend, "backend_version": entry.backend_version,
            "gpu_arch": entry.gpu_arch, "precision": entry.precision, "profile": entry.profile.to_dict(),
            "file_size": entry.file_size, "build_seconds": entry.build_seconds, "created": entry.created,
            "accuracy": entry.accuracy, "status": item.status.state, "status_reason": item.status.reason}


def requested_profile(body: dict[str, Any], family) -> Profile:
    if "profile" in body:
        return Profile.from_dict(body["profile"]).validate()
    presets = presets_for(family)
    name = body.get("preset")
    if name is None:
        return presets[0].profile
    match = next((p for p in presets if p.name == name), None)
    if match is None:
        raise ProfileError({"preset": f"unknown preset {name!r}; presets for {family.label}: "
                                      + ", ".join(repr(p.name) for p in presets)})
    return match.profile


def start_build(body: dict[str, Any]) -> dict[str, Any]:
    source = model_source()
    loaded = run_exclusive(current_model)
    profile = requested_profile(body, loaded.family)
    backend = get_backend(str(body.get("backend", "tensorrt")))
    backend.require()
    precision = str(body.get("precision", "fp16"))
    if precision not in ("fp16", "bf16", "fp32"):
        raise ProfileError({"precision": f"must be fp16, bf16 or fp32, got {precision!r}"})

    def work(progress, cancel):
        entry = source.run_exclusive(lambda: build_engine(
            loaded.unet, loaded.checkpoint, loaded.family, profile, backend, source.workspace, precision,
            device=source.device, progress=progress, cancel=cancel))
        sd_unet.list_unets()  # the checkpoint may have its first engine: its "[TRT]" option appears
        return entry

    title = f"{loaded.checkpoint.name}: {backend.name} {precision}, {profile.label()}"
    started = jobs.start(title, work)
    if not started.ok:
        raise HTTPException(409, started.refused)
    return {"job_id": started.job_id, "title": title}


def register(app: FastAPI) -> None:
    @app.get(PREFIX + "/engines")
    def list_engines() -> list[dict[str, Any]]:
        """Every engine in the manifest, with its status on this machine."""
        source = model_source()
        try:
            return [engine_json(item) for item in catalog(source.workspace, source.device)]
        except ManifestError as e:
            raise HTTPException(500, str(e)) from None

    @app.post(PREFIX + "/builds", status_code=202)
    def build(body: dict[str, Any] = Body(default={})) -> dict[str, Any]:
        """Start building an engine for the loaded checkpoint (one build at a time)."""
        try:
            return start_build(body)
        except NoModelLoaded as e:
            raise HTTPException(409, str(e)) from None
        except (ProfileError, UnsupportedModelError, BackendUnavailable, ValueError) as e:
            raise HTTPException(400, str(e)) from None

    @app.get(PREFIX + "/builds/{job_id}")
    def build_status(job_id: str) -> dict[str, Any]:
        status = jobs.status(job_id)
        if status is None:
            raise HTTPException(404, f"no build {job_id!r}")
        return status.to_dict()

    @app.delete(PREFIX + "/builds/{job_id}")
    def cancel_build(job_id: str) -> dict[str, Any]:
        if not jobs.cancel(job_id):
            raise HTTPException(404, f"no running build {job_id!r}")
        return jobs.status(job_id).to_dict()

    @app.delete(PREFIX + "/engines/{engine_id}")
    def delete_engine(engine_id: str) -> dict[str, Any]:
        """Delete an engine (file, sidecar, manifest entry); waits for the generation in progress."""
        source = model_source()

        def remove():
            current = sd_unet.current_unet
            if getattr(current, "router", None) is not None:
                current.router.unload(engine_id)
            return source.workspace.manifest().remove(engine_id)
        try:
            entry = run_exclusive(remove)
        except KeyError as e:
            raise HTTPException(404, str(e.args[0])) from None
        except ManifestError as e:
            raise HTTPException(500, str(e)) from None
        sd_unet.list_unets()
        return {"deleted": entry.id}
