"""Building ControlNet models' engines (issue 23) from the WebUI's API and the tab, in the WebUI
double with sd-webui-controlnet's model list (tests/webui_double/controlnet/model_list.py): a model
is picked by the name ControlNet lists; anything else is one line naming the field, no job, no
server path."""
from __future__ import annotations

import threading

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from tests.webui_double import harness
from tests.webui_double.controlnet import model_list
from tests.webui_double.harness import checkpoint_file, webui_unet
from modules import call_queue, errors
from modules.api.api import Api
from sd_unet_trt.models import unet as arch
from sd_unet_trt.scripts.trt_unet_webui import api, unets
from sd_unet_trt.scripts.trt_unet_webui.source import model_source
from sd_unet_trt.trt_core import jobs
from sd_unet_trt.models.controlnet import PREFIX, TINY, seeded_controlnet
from sd_unet_trt.trt_core.controlnet.source import controlnet_file_sha256
from sd_unet_trt.trt_core.workspace import Workspace
from sd_unet_trt.ui.controlnet_build import controlnet_choices
from sd_unet_trt.ui.tab import create_tab

PROFILE = {"batch": {"min": 1, "opt": 1, "max": 2}, "height": {"min": 64, "opt": 64, "max": 128},
           "width": {"min": 64, "opt": 64, "max": 128}, "tokens": {"min": 75, "opt": 75, "max": 150}}


@pytest.fixture
def webui(tmp_path):
    source = arch.seeded_unet(arch.TINY, seed=4)
    harness.reset(tmp_path)
    harness.load_extension()
    harness.load(webui_unet(source), checkpoint_file(tmp_path, "tiny", source))
    yield tmp_path
    model_list.uninstall()
    harness.stop()
    errors.reported.clear()


def client() -> TestClient:
    app = FastAPI()
    Api(app, call_queue.queue_lock)
    api.register(app)
    return TestClient(app)


def test_the_models_controlnet_lists_are_the_choices(webui):
    assert controlnet_choices(model_source()) == ["None"]  # ControlNet not installed: nothing to pick
    model_list.install({"canny [0123abcd]": webui / "ControlNet" / "canny.safetensors"})
    assert controlnet_choices(model_source()) == ["None", "canny [0123abcd]"]


@pytest.mark.parametrize("body,detail", [
    ({"controlnet": "nope [00000000]", "profile": PROFILE}, "no ControlNet model nope [00000000]; listed: 'canny [0123abcd]'"),
    ({"profile": PROFILE}, "controlnet: name the ControlNet model, as sd-webui-controlnet lists it"),
    ({"controlnet": ["canny [0123abcd]"], "profile": PROFILE}, "controlnet: must be text"),
    ({"controlnet": "canny [0123abcd]", "profile": PROFILE, "backend": "onnxruntime", "precision": "int8"}, "precision:"),
    ({"controlnet": "canny [0123abcd]", "checkpoint": "x"}, "unknown field checkpoint; a build request takes controlnet, backend"),
])
def test_a_request_that_cannot_build_is_one_line_and_starts_nothing(webui, body, detail):
    model_list.install({"canny [0123abcd]": webui / "ControlNet" / "canny.safetensors"})
    answer = client().post("/trt-unet/v1/controlnet-builds", json=body)
    assert answer.status_code == 400 and detail in answer.json()["detail"], answer.text
    assert str(webui) not in answer.text and "\n" not in answer.json()["detail"]
    assert jobs.current() is None


@pytest.fixture
def controlnet_file(webui):
    path = webui / "ControlNet" / "tiny_control_a.safetensors"
    path.parent.mkdir(exist_ok=True)
    save_file({PREFIX + k: v.contiguous() for k, v in seeded_controlnet(TINY, 1).state_dict().items()}, str(path))
    model_list.install({"tiny_control_a [0123abcd]": path})
    return path


def finished(job_id: str):
    for _ in range(1200):
        status = jobs.status(job_id)
        if not status.active:
            return status
        threading.Event().wait(0.05)
    raise TimeoutError(job_id)


def controlnet_entries(root):
    return [e for e in Workspace(root).manifest().entries() if e.checkpoint.sha256 == controlnet_file_sha256(
        root / "ControlNet" / "tiny_control_a.safetensors")]


def test_the_api_builds_an_engine_of_the_controlnet_it_names(webui, controlnet_file):
    answer = client().post("/trt-unet/v1/controlnet-builds", json={
        "controlnet": "tiny_control_a [0123abcd]", "backend": "onnxruntime", "precision": "fp32", "profile": PROFILE})
    assert answer.status_code == 202, answer.text
    assert answer.json()["title"] == "ControlNet tiny_control_a [0123abcd]: onnxruntime fp32, 64-128x64-128 px, batch 1-2, 75-150 tokens"
    status = finished(answer.json()["job_id"])
    assert status.state == "done", status.error
    assert [e.backend for e in controlnet_entries(webui)] == ["onnxruntime"]
    busy = client().get(f"/trt-unet/v1/builds/{answer.json()['job_id']}")
    assert busy.status_code == 200 and busy.json()["state"] == "done"
    # a ControlNet's engines are no checkpoint's: the SD Unet list offers no option for them
    assert controlnet_file_sha256(controlnet_file) not in unets.checkpoints_with_engines()


def test_the_tab_lists_controlnets_and_builds_the_one_picked(webui, controlnet_file):
    from tests.test_ui_messages import run_export

    model_list.install({})  # ControlNet writes and lists models after the tab is made (the real check's do)
    tab = create_tab(model_source())
    model_list.install({"tiny_control_a [0123abcd]": controlnet_file})
    on_load = [fn.fn for dep, fn in zip(tab.dependencies, tab.fns) if dep["trigger"] == "load"]
    assert on_load[1]()["choices"] == ["None", "tiny_control_a [0123abcd]"]  # the page's load asks again
    steps = run_export(tab, [1, 1, 2, 64, 64, 128, 64, 64, 128, 75, 75, 150], controlnet_model="tiny_control_a [0123abcd]")
    assert "trt-msg-error" not in str(steps), steps[-1][:3]
    assert [e.backend for e in controlnet_entries(webui)] == ["onnxruntime"]
    refused = run_export(tab, [1, 1, 2, 64, 64, 128, 64, 64, 128, 75, 75, 150], controlnet_model="gone [00000000]")
    assert len(refused) == 1 and "no ControlNet model gone [00000000]" in refused[0][0]
