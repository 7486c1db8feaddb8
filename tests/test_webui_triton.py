"""The WebUI's Triton setting (issue 14) in the WebUI double, against a real Triton server serving
the checkpoint's engines (export-triton over the same workspace): with the setting, the sampler's
calls go to the server (its statistics count them) and the image is the local engine's; with a
LoRA they run on the local engine, which takes it, and on the server again once it is off; when the
server dies mid-session, the calls run on the local engine and the infotext says so; a server that
is not there yet leaves the local engines in charge (the infotext and a warning say why) until it
answers."""
from __future__ import annotations

import logging

import pytest

from tests.real_webui.tiny_lora import lora_tensors
from tests.triton_server import needs_server, start
from tests.webui_double import harness
from tests.webui_double.harness import register_ort_engines, webui_unet
from modules import errors, processing, shared
from sd_unet_trt.scripts.trt_unet_webui.settings import TRITON_URL
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.serving import server
from sd_unet_trt.trt_core.serving.repository import export_triton, model_name
from sd_unet_trt.trt_core.workspace import Workspace

SHA = "d3" * 32
PROFILE = Profile(Range(1, 1, 2), Range(64, 64, 64), Range(64, 64, 64), Range(75, 75, 75))
LOCAL = f"[onnxruntime fp32] {PROFILE.label()}"
REMOTE = f"[triton {model_name(SHA)}] {PROFILE.label()}"


@pytest.fixture
def webui(tmp_path, exported):
    unet, onnx = exported("tiny")
    register_ort_engines(Workspace(tmp_path), onnx, "tiny", CheckpointId.of(SHA, "tiny"), [PROFILE])
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    networks = harness.install_lora(tmp_path / "Lora", {"style": lora_tensors(shapes, seed=1, scale=0.5)})
    runner, _ = harness.start(tmp_path, webui_unet(unet), "tiny", SHA)
    yield runner
    shared.opts.data[TRITON_URL] = ""
    harness.stop()
    networks.uninstall()
    assert not errors.reported, errors.reported


def generate(runner, prompt="a cat"):
    p = processing.StableDiffusionProcessingTxt2Img(scripts=runner, prompt=prompt, width=64, height=64, steps=3,
                                                    cfg_scale=5.0, seed=1)
    out = processing.process_images(p)
    return out.images[0], out.infotexts[0].split("TensorRT: ", 1)[1]


def counts(url: str, model: str) -> tuple[int, int]:
    """(rows inferred, executions) of the server's model."""
    stats = server.statistics(url, model)
    return stats["inference_count"], stats["execution_count"]


@needs_server
def test_the_server_serves_the_calls_and_the_local_engine_takes_over_when_it_dies(webui, tmp_path):
    local_image, routed = generate(webui)
    assert routed == LOCAL
    export_triton(Workspace(tmp_path), SHA, tmp_path / "repo", "cpu")
    (tmp_path / "server").mkdir()
    process, url = start(tmp_path / "repo", tmp_path / "server")
    try:
        shared.opts.data[TRITON_URL] = url
        served_image, routed = generate(webui)
        assert routed == REMOTE
        assert counts(url, model_name(SHA)) == (6, 3)  # one call of 2 rows (cond, uncond) per step
        assert (served_image - local_image).abs().max().item() < 1e-4
        _, routed = generate(webui, "<lora:style:1> a cat")  # the server's engines hold the checkpoint's weights
        assert routed == f"{LOCAL}; LoRA applied to the engines: style:1"
        _, routed = generate(webui)  # the LoRA off: the server's engines fit again
        assert routed == REMOTE and counts(url, model_name(SHA)) == (12, 6)
    finally:
        process.kill()
        process.wait()
    after, routed = generate(webui)
    assert routed == f"{LOCAL}; {REMOTE} did not answer; other engines took its calls"
    assert (after - local_image).abs().max().item() < 1e-4


@needs_server
def test_a_server_not_there_yet_leaves_the_local_engines_and_serves_once_it_answers(webui, tmp_path, caplog):
    port = server.free_port()
    shared.opts.data[TRITON_URL] = f"127.0.0.1:{port}"
    with caplog.at_level(logging.WARNING, logger="sd_unet_trt"):
        _, routed = generate(webui)
    assert routed.startswith(f"{LOCAL}; Triton server 127.0.0.1:{port} does not serve this checkpoint's engines ("), routed
    assert any("does not serve this checkpoint's engines" in r.getMessage() for r in caplog.records), caplog.text
    export_triton(Workspace(tmp_path), SHA, tmp_path / "repo", "cpu")
    (tmp_path / "server").mkdir()
    process = server.start(tmp_path / "repo", tmp_path / "server", port, server.free_port(), tmp_path / "triton.log")
    try:
        _, routed = generate(webui)  # the next pass asks the server again
        assert routed == REMOTE
    finally:
        process.kill()
        process.wait()
