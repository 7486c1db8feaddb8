"""HTTP routes under /trt-unet/v1 (docs/WEBUI.md has curl examples).

They are the WebUI's API as much as /sdapi is: registered only when the WebUI serves its API,
behind the very dependencies (its --api-auth check) that its own routes carry. A build request
answers at once, 202 with a job id or 409 while another build runs; the build itself waits its
turn in the WebUI's queue. Error texts name files, never server paths.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.routing import APIRoute

from modules import sd_unet

from sd_unet_trt.models.families import UnsupportedModelError
from sd_unet_trt.scripts.trt_unet_webui.hook import active_unet
from sd_unet_trt.scripts.trt_unet_webui.source import current_model, model_source, run_exclusive
from sd_unet_trt.trt_core import jobs
from sd_unet_trt.trt_core.backends import get_backend
from sd_unet_trt.trt_core.backends.base import BackendUnavailable
from sd_unet_trt.trt_core.build_check import BuildChoice, build_problem
from sd_unet_trt.trt_core.catalog import catalog, engine_label
from sd_unet_trt.trt_core.manifest import ManifestError
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import Profile, ProfileError, presets_for, shown
from sd_unet_trt.ui.controlnet_build import start_controlnet_build
from sd_unet_trt.ui.source import NoModelLoaded

log = logging.getLogger("sd_unet_trt")
PREFIX = "/trt-unet/v1"
WEBUI_API_PREFIX = "/sdapi/v1/"
# an absolute path (POSIX or Windows) of two or more parts: shown by its last part only
_PATH = re.compile(r"(?<![\w.-])(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/:;,()]+){2,}")
MAX_BODY = 64 * 1024  # bytes; a build request is a few hundred
BUILD_FIELDS = ("backend", "precision", "profile", "preset", "controlnet")
# a ControlNet model's engine: `controlnet` names the model as sd-webui-controlnet lists it
CONTROLNET_BUILD_FIELDS = ("controlnet", "backend", "precision", "profile", "preset")


def public(text: str) -> str:
    """`text` without the server's folders: a path is reduced to its file name."""
    return _PATH.sub(lambda m: re.split(r"[\\/]", m.group(0))[-1], str(text))


def webui_api_dependencies(app: FastAPI) -> list | None:
    """The dependencies the WebUI's own API routes carry (its --api-auth check, when set), or None
    when it serves no API."""
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path.startswith(WEBUI_API_PREFIX):
            return list(route.dependencies)
    return None


def engine_json(item) -> dict[str, Any]:
    entry = item.entry
    return {"id": entry.id, "label": engine_label(entry), "checkpoint": entry.checkpoint.__dict__,
            "family": entry.family, "backend": entry.backend, "backend_version": entry.backend_version,
            "gpu_arch": entry.gpu_arch, "precision": entry.precision, "profile": entry.profile.to_dict(),
            "file_size": entry.file_size, "build_seconds": entry.build_seconds, "created": entry.created,
            "accuracy": entry.accuracy, "status": item.status.state, "status_reason": public(item.status.reason)}


def job_json(status) -> dict[str, Any]:
    data = status.to_dict()
    data["error"] = public(data["error"])
    return data


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


async def build_request(request: Request) -> dict[str, Any]:
    """The body of POST /builds (BUILD_FIELDS)."""
    return await request_body(request, BUILD_FIELDS)


async def controlnet_build_request(request: Request) -> dict[str, Any]:
    """The body of POST /controlnet-builds (CONTROLNET_BUILD_FIELDS)."""
    return await request_body(request, CONTROLNET_BUILD_FIELDS)


async def request_body(request: Request, fields: tuple[str, ...]) -> dict[str, Any]:
    """A request's body read within bounds (size, nesting, numbers): a JSON object of `fields`, or
    a 400 whose detail is one short line (never the input echoed back)."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise HTTPException(400, f"the request body is over {MAX_BODY // 1024} KiB; a build request is a few "
                                     "hundred bytes")
    if not body.strip():
        return {}
    try:
        data = json.loads(bytes(body), parse_constant=_no_constant)
    except RecursionError:
        raise HTTPException(400, "the request body is nested too deeply") from None
    except ValueError as e:  # not JSON, not UTF-8, NaN or Infinity, a number of thousands of digits
        raise HTTPException(400, f"the request body is not valid JSON: {str(e).split(';')[0]}") from None
    if not isinstance(data, dict):
        raise HTTPException(400, f"the request body must be a JSON object, got {shown(data)}")
    unknown = [key for key in data if key not in fields]
    if unknown:
        raise HTTPException(400, f"unknown field {shown(unknown[0])}; a build request takes {', '.join(fields)}")
    return data


def _text(body: dict[str, Any], field: str, default: str | None) -> str | None:
    value = body.get(field, default)
    if value is not None and not isinstance(value, str):
        raise ProfileError({field: f"must be text, got {shown(value)}"})
    return value


def requested_profile(body: dict[str, Any], family) -> Profile:
    if "profile" in body and "preset" in body:
        raise ProfileError({"profile": "give a profile or a preset, not both"})
    if "profile" in body:
        return Profile.from_dict(body["profile"]).validate()
    presets = presets_for(family)
    name = _text(body, "preset", None)
    if name is None:
        return presets[0].profile
    match = next((p for p in presets if p.name == name), None)
    if match is None:
        raise ProfileError({"preset": f"unknown preset {shown(name)}; presets for {family.label}: "
                                      + ", ".join(repr(p.name) for p in presets)})
    return match.profile


def start_build(body: dict[str, Any]) -> dict[str, Any]:
    source = model_source()
    target = current_model()  # the selected checkpoint's file: no model load, no wait for the queue
    profile = requested_profile(body, target.family)
    choice = BuildChoice(_text(body, "backend", "tensorrt"), _text(body, "precision", "fp16"), profile,
                         body.get("controlnet", False))
    problem = build_problem(choice)
    if problem:
        raise problem
    backend, precision, controlnet = get_backend(choice.backend), choice.precision, choice.controlnet

    def work(progress, cancel):
        entry = source.run_exclusive(lambda: build_engine(
            target, profile, backend, source.workspace, precision, device=source.device, progress=progress,
            cancel=cancel, controlnet=controlnet))
        sd_unet.list_unets()  # the checkpoint may have its first engine: its "[TRT]" option appears
        return entry

    title = f"{target.checkpoint.name}: {backend.name} {precision}{', ControlNet inputs' if controlnet else ''}, {profile.label()}"
    started = jobs.start(title, work)
    if not started.ok:
        raise HTTPException(409, started.refused)
    return {"job_id": started.job_id, "title": title, "checkpoint": target.checkpoint.name}


def start_controlnet_engine_build(body: dict[str, Any]) -> dict[str, Any]:
    source = model_source()
    # a preset is the selected checkpoint's family's (the ControlNet serves its generations)
    family = None if "profile" in body else current_model().family
    profile = requested_profile(body, family)
    name = _text(body, "controlnet", None)
    if name is None:
        raise ProfileError({"controlnet": "name the ControlNet model, as sd-webui-controlnet lists it"})
    started, title = start_controlnet_build(source, name, profile, _text(body, "backend", "tensorrt"),
                                            _text(body, "precision", "fp16"))
    if not started.ok:
        raise HTTPException(409, started.refused)
    return {"job_id": started.job_id, "title": title, "controlnet": name}


def register(app: FastAPI) -> bool:
    """Add the routes beside the WebUI's API; False (and nothing added) when it serves none."""
    dependencies = webui_api_dependencies(app)
    if dependencies is None:
        log.info("TensorRT: the WebUI serves no API (start it with --api), so %s is not served either", PREFIX)
        return False

    def route(path: str, methods: list[str], **kwargs):
        def add(endpoint):
            app.add_api_route(PREFIX + path, endpoint, methods=methods, dependencies=dependencies, **kwargs)
            return endpoint
        return add

    @route("/engines", ["GET"])
    def list_engines() -> list[dict[str, Any]]:
        """Every engine in the manifest, with its status on this machine."""
        source = model_source()
        try:
            return [engine_json(item) for item in catalog(source.workspace, source.device)]
        except ManifestError as e:
            raise HTTPException(500, public(e)) from None

    # the body is read by build_request, within bounds; the docs still show what it takes
    @route("/builds", ["POST"], status_code=202, openapi_extra={"requestBody": {"content": {"application/json": {
        "schema": {"type": "object", "properties": {field: {} for field in BUILD_FIELDS}}}}}})
    def build(body: dict[str, Any] = Depends(build_request)) -> dict[str, Any]:
        """Start building an engine for the selected checkpoint (one build at a time)."""
        try:
            return start_build(body)
        except NoModelLoaded as e:
            raise HTTPException(409, public(e)) from None
        except (ProfileError, UnsupportedModelError, BackendUnavailable, ValueError) as e:
            raise HTTPException(400, public(e)) from None

    @route("/controlnet-builds", ["POST"], status_code=202, openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": {"type": "object", "properties": {f: {} for f in CONTROLNET_BUILD_FIELDS}}}}}})
    def controlnet_build(body: dict[str, Any] = Depends(controlnet_build_request)) -> dict[str, Any]:
        """Start building an engine of a ControlNet model (one build at a time; /builds/{job_id} follows it)."""
        try:
            return start_controlnet_engine_build(body)
        except NoModelLoaded as e:
            raise HTTPException(409, public(e)) from None
        except (ProfileError, UnsupportedModelError, BackendUnavailable, ValueError) as e:
            raise HTTPException(400, public(e)) from None

    @route("/builds/{job_id}", ["GET"])
    def build_status(job_id: str) -> dict[str, Any]:
        status = jobs.status(job_id)
        if status is None:
            raise HTTPException(404, f"no build {shown(job_id)}")
        return job_json(status)

    @route("/builds/{job_id}", ["DELETE"])
    def cancel_build(job_id: str) -> dict[str, Any]:
        if not jobs.cancel(job_id):
            raise HTTPException(404, f"no running build {shown(job_id)}")
        return job_json(jobs.status(job_id))

    @route("/engines/{engine_id}", ["DELETE"])
    def delete_engine(engine_id: str) -> dict[str, Any]:
        """Delete an engine (file, sidecar, manifest entry); waits for the generation in progress."""
        source = model_source()

        def remove():
            unet = active_unet()
            if unet is not None:  # its memory now, not at the next generation's re-read
                unet.unload(engine_id)
            return source.workspace.manifest().remove(engine_id)
        try:
            removal = run_exclusive(remove)
        except KeyError:
            raise HTTPException(404, f"no engine {shown(engine_id)} in the manifest") from None
        except ManifestError as e:
            raise HTTPException(500, public(e)) from None
        sd_unet.list_unets()
        return {"deleted": removal.entry.id, "kept": removal.kept}

    return True
