"""Builds from the WebUI (double) export the checkpoint file's own weights, whatever the loaded
model holds: after a LoRA generation the WebUI leaves the LoRA merged into the UNet, and an engine
built then must still be the checkpoint's. An export made before weights were recorded (maybe of
merged weights) is made again. The export runs in a child process, as inside the WebUI."""
from __future__ import annotations

import logging

import pytest

from tests.real_webui.tiny_lora import lora_tensors
from tests.webui_double import harness
from tests.webui_double.harness import checkpoint_file, webui_unet
from modules import errors, processing, shared
from sd_unet_trt.models import unet as arch
from sd_unet_trt.scripts.trt_unet_webui.source import current_model, model_source
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.checkpoint_file import read_unet_tensors
from sd_unet_trt.trt_core.export import ONNX_NAME
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.weights import digest, fingerprints

SMALL = Profile(Range(1, 1, 2), Range(64, 64, 80), Range(64, 64, 80), Range(75, 75, 150))
TOL = 1e-3


@pytest.fixture
def webui(tmp_path):
    source = arch.seeded_unet(arch.TINY, seed=8)
    shapes = {k: tuple(v.shape) for k, v in source.state_dict().items()}
    networks = harness.install_lora(tmp_path / "Lora", {"style": lora_tensors(shapes, seed=3, scale=0.5)})
    harness.reset(tmp_path)
    _, runner = harness.load_extension()
    shared.opts.data["lora_functional"] = False
    info = checkpoint_file(tmp_path, "tiny", source)
    model = harness.load(webui_unet(source), info)
    yield runner, model, tmp_path
    harness.stop()
    networks.uninstall()
    assert not errors.reported, errors.reported


def generate(runner, unet_option, prompt):
    shared.opts.data["sd_unet"] = unet_option
    p = processing.StableDiffusionProcessingTxt2Img(scripts=runner, prompt=prompt, width=64, height=64, steps=2,
                                                    cfg_scale=5.0, seed=5)
    return processing.process_images(p)


def test_an_engine_built_after_a_lora_generation_holds_the_checkpoints_weights(webui, caplog):
    runner, model, root = webui
    generate(runner, "None", "<lora:style:1> a cat")  # the built-in UNet now holds the LoRA, merged
    merged = fingerprints(model.model.diffusion_model.state_dict())
    target = current_model()
    own = read_unet_tensors(target.path)
    assert merged != fingerprints(own)  # the live UNet differs from the file: the test can fail
    stale = root / "Unet-onnx" / f"{target.checkpoint.short_hash}-tiny-fp16"
    stale.mkdir(parents=True)
    (stale / ONNX_NAME).write_bytes(b"an export from an earlier version")  # no weights record
    source = model_source()
    with caplog.at_level(logging.WARNING):
        entry = source.run_exclusive(lambda: build_engine(target, SMALL, OnnxRuntimeBackend(), source.workspace,
                                                          "fp16", device="cpu"))
    assert "replacing the export" in caplog.text and "may hold a LoRA" in caplog.text
    assert entry.checkpoint.weights == digest(fingerprints(own)) != digest(merged)
    assert (stale / "unet.weights.json").is_file()
    kept = [p for p in stale.parent.iterdir() if p.name.startswith(f"{stale.name}.kept-")]  # set aside, not deleted
    assert len(kept) == 1 and (kept[0] / ONNX_NAME).read_bytes() == b"an export from an earlier version"
    plain_fast = generate(runner, "Automatic", "a cat")
    plain_ref = generate(runner, "None", "a cat")
    value = plain_fast.infotexts[0].split("TensorRT: ", 1)[1]
    assert value.startswith("[onnxruntime fp16] 64-80x64-80 px") and "LoRA" not in value, value
    assert max((a - b).abs().max().item() for a, b in zip(plain_fast.images, plain_ref.images)) < 2e-2  # fp16 engine
