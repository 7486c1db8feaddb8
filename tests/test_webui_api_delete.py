"""DELETE /trt-unet/v1/engines/{id} in the WebUI double: the engine leaves the manifest and, when the
engine UNet holds it loaded, its memory too, at once rather than at the next generation."""
from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.webui_double import harness
from tests.webui_double.harness import register_ort_engines, webui_unet
from modules import call_queue, errors, processing, shared
from modules.api.api import Api
from sd_unet_trt.scripts.trt_unet_webui import api
from sd_unet_trt.scripts.trt_unet_webui.hook import active_unet
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.workspace import Workspace

SHA = "d5" * 32
PROFILE = Profile(Range(1, 1, 2), Range(64, 64, 64), Range(64, 64, 64), Range(75, 75, 75))


@pytest.fixture
def webui(tmp_path, exported):
    unet, onnx_path = exported("tiny")
    entries = register_ort_engines(Workspace(tmp_path), onnx_path, "tiny", CheckpointId.of(SHA, "tiny"), [PROFILE])
    runner, _ = harness.start(tmp_path, webui_unet(unet), "tiny", SHA)
    yield runner, entries[0].id
    harness.stop()
    assert not errors.reported, errors.reported


def test_deleting_a_loaded_engine_unloads_it(webui):
    runner, engine_id = webui
    shared.opts.data["sd_unet"] = "Automatic"
    processing.process_images(processing.StableDiffusionProcessingTxt2Img(
        scripts=runner, prompt="a cat", width=64, height=64, steps=2, seed=1))
    unet = active_unet()
    router = unet.checkpoints[SHA].router
    assert router.loaded == [engine_id]
    app = FastAPI()
    Api(app, call_queue.queue_lock)
    api.register(app)
    answer = TestClient(app).delete(f"/trt-unet/v1/engines/{engine_id}")
    assert answer.status_code == 200, answer.text
    assert answer.json()["deleted"] == engine_id
    assert router.loaded == []
