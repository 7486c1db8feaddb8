"""The /trt-unet/v1 routes beside the WebUI's API (its Api object from the double, the real FastAPI):
the same --api-auth as /sdapi, only when the WebUI serves an API, a build request answered at once
(202, 409 while one runs) even while a generation holds the queue, and errors without server paths."""
from __future__ import annotations

import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.webui_double import harness
from tests.webui_double.harness import checkpoint_file, webui_unet
from modules import call_queue, errors, shared
from modules.api.api import Api
from sd_unet_trt.models import unet as arch
from sd_unet_trt.scripts.trt_unet_webui import api
from sd_unet_trt.trt_core import jobs
from sd_unet_trt.trt_core.build_check import BuildChoice, build_problem
from sd_unet_trt.trt_core.profiles import Profile

AUTH = ("user", "secret")


@pytest.fixture
def webui(tmp_path):
    """A started WebUI double with the tiny checkpoint as a real file, the selected one."""
    source = arch.seeded_unet(arch.TINY, seed=4)
    harness.reset(tmp_path)
    harness.load_extension()
    info = checkpoint_file(tmp_path, "tiny", source)
    harness.load(webui_unet(source), info)
    yield tmp_path
    harness.stop()
    shared.cmd_opts.api_auth = None
    errors.reported.clear()


def app_with(api_auth: str | None, webui_api: bool = True) -> FastAPI:
    shared.cmd_opts.api_auth = api_auth
    app = FastAPI()
    if webui_api:
        Api(app, call_queue.queue_lock)
    api.register(app)
    return app


def test_routes_answer_401_without_the_webuis_credentials(webui):
    client = TestClient(app_with("user:secret"))
    for method, path in [("get", "/trt-unet/v1/engines"), ("post", "/trt-unet/v1/builds"),
                         ("delete", "/trt-unet/v1/engines/x"), ("get", "/trt-unet/v1/builds/1"),
                         ("get", "/sdapi/v1/sd-models")]:
        assert getattr(client, method)(path).status_code == 401, path
        assert getattr(client, method)(path, auth=("user", "wrong")).status_code == 401, path
    assert client.get("/trt-unet/v1/engines", auth=AUTH).status_code == 200
    assert TestClient(app_with(None)).get("/trt-unet/v1/engines").status_code == 200  # no --api-auth: open, like /sdapi


def test_no_routes_when_the_webui_serves_no_api(webui):
    app = app_with("user:secret", webui_api=False)
    assert not [r for r in app.routes if getattr(r, "path", "").startswith(api.PREFIX)]


def test_a_build_is_answered_at_once_while_a_generation_runs_and_a_second_is_refused(webui, monkeypatch):
    started = threading.Event()
    release = threading.Event()

    def slow_build(*args, cancel=None, **kwargs):
        started.set()
        while not release.is_set() and not cancel.cancelled:
            release.wait(0.05)
        raise RuntimeError("stopped by the test")

    monkeypatch.setattr(api, "build_engine", slow_build)
    client = TestClient(app_with(None))
    with call_queue.queue_lock:  # a generation in progress holds the WebUI's queue
        first = client.post("/trt-unet/v1/builds", json={"backend": "onnxruntime", "precision": "fp32"})
        assert first.status_code == 202, first.text
        assert first.json()["checkpoint"] == "tiny"
        second = client.post("/trt-unet/v1/builds", json={"backend": "onnxruntime", "precision": "fp32"})
        assert second.status_code == 409 and "build" in second.json()["detail"]
        assert not started.is_set()  # the build itself waits for the queue
    assert started.wait(30)
    job = first.json()["job_id"]
    assert client.delete(f"/trt-unet/v1/builds/{job}").status_code == 200
    release.set()
    for _ in range(200):
        if not jobs.status(job).active:
            break
        threading.Event().wait(0.05)
    assert jobs.status(job).state in ("cancelled", "failed")


def test_errors_do_not_reveal_server_paths(webui):
    client = TestClient(app_with(None))
    manifest = webui / "Unet-trt" / "manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text("{ not json")
    answer = client.get("/trt-unet/v1/engines")
    assert answer.status_code == 500 and "manifest.json" in answer.json()["detail"]
    assert str(webui) not in answer.text and "/tmp" not in answer.text
    bad = client.post("/trt-unet/v1/builds", json={"backend": "onnxruntime", "preset": "nope"})
    assert bad.status_code == 400 and "unknown preset" in bad.json()["detail"] and str(webui) not in bad.text


def test_public_keeps_file_names_and_relative_paths():
    assert api.public("/home/me/sd/models/Unet-trt/manifest.json is corrupt") == "manifest.json is corrupt"
    assert api.public(r"C:\sd\models\x.onnx failed") == "x.onnx failed"
    assert api.public("Unet-onnx/abc/unet.onnx, 1/255, 64x64 px") == "Unet-onnx/abc/unet.onnx, 1/255, 64x64 px"


def test_a_build_with_controlnet_inputs(webui, monkeypatch):
    """"controlnet": true reaches the build; anything but a boolean is a 400 naming the field."""
    asked = []
    monkeypatch.setattr(api, "build_engine", lambda *args, **kwargs: asked.append(kwargs["controlnet"]))
    client = TestClient(app_with(None))
    bad = client.post("/trt-unet/v1/builds", json={"backend": "onnxruntime", "controlnet": "yes"})
    assert bad.status_code == 400 and "controlnet: must be true or false" in bad.json()["detail"], bad.text
    started = client.post("/trt-unet/v1/builds", json={"backend": "onnxruntime", "precision": "fp32", "controlnet": True})
    assert started.status_code == 202 and "ControlNet inputs" in started.json()["title"], started.text
    for _ in range(200):
        if not jobs.status(started.json()["job_id"]).active:
            break
        threading.Event().wait(0.05)
    assert asked == [True]


def test_a_bad_build_request_is_refused_in_the_words_of_the_tab_and_the_cli(webui):
    """The route asks trt_core.build_check.build_problem, as the tab and the pipeline do."""
    profile = Profile.from_dict({"batch": {"min": 1, "opt": 1, "max": 2}, "height": {"min": 64, "opt": 64, "max": 128},
                                 "width": {"min": 64, "opt": 64, "max": 128}, "tokens": {"min": 75, "opt": 75, "max": 150}})
    line = str(build_problem(BuildChoice("onnxruntime", "int8", profile)))
    client = TestClient(app_with(None))
    bad = client.post("/trt-unet/v1/builds", json={"backend": "onnxruntime", "precision": "int8",
                                                   "profile": profile.to_dict()})
    assert bad.status_code == 400 and bad.json()["detail"] == line and jobs.current() is None
