"""A refiner in the WebUI double: its own engines serve its steps (whether the WebUI reloads it in
place or, for another config, without applying the UNet option again), the infotext says what
served each pass, and a build started after a refiner generation is for the selected checkpoint."""
from __future__ import annotations

import pytest

from tests.webui_double import harness
from tests.webui_double.harness import checkpoint_file, load, register_ort_engines, webui_unet
from modules import errors, hashes, processing, sd_models, shared
from sd_unet_trt.scripts.trt_unet_webui.source import current_model
from sd_unet_trt.trt_core.export import export_onnx
from sd_unet_trt.models import unet as arch
from sd_unet_trt.models.families import TINY
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.workspace import Workspace

REFINER_SHA = "ee" * 32
SMALL = Profile(Range(1, 1, 2), Range(64, 64, 80), Range(64, 64, 80), Range(75, 75, 150))
LABEL = "[onnxruntime fp32] 64-80x64-80 px, batch 1-2, 75-150 tokens"
TOL = 1e-3


@pytest.fixture(scope="module")
def sources(tmp_path_factory, exported):
    base, base_onnx = exported("tiny")
    refiner = arch.seeded_unet(arch.TINY, seed=6)
    refiner_onnx = export_onnx(refiner, TINY, tmp_path_factory.mktemp("refiner") / "onnx", weights="fp32").onnx_path
    return base, base_onnx, refiner, refiner_onnx


@pytest.fixture
def start(tmp_path, sources):
    base, base_onnx, refiner, refiner_onnx = sources

    def run(refiner_engines: bool, same_config: bool = True):
        workspace = Workspace(tmp_path)
        info = checkpoint_file(tmp_path, "tiny", base)  # a real file: builds read it
        register_ort_engines(workspace, base_onnx, "tiny", CheckpointId.of(hashes.file_sha256[info.filename], "tiny"), [SMALL])
        if refiner_engines:
            register_ort_engines(workspace, refiner_onnx, "tiny", CheckpointId.of(REFINER_SHA, "tiny2"), [SMALL])
        runner, _ = harness.start(tmp_path, webui_unet(refiner), "tiny2", REFINER_SHA)
        refiner_model = shared.sd_model
        if not same_config:
            refiner_model.used_config = "another config"  # the WebUI loads it with load_model
        load(webui_unet(base), info)  # the selected checkpoint, loaded last
        return runner
    yield run
    harness.stop()
    assert not errors.reported, errors.reported


def generate(runner, unet_option: str):
    shared.opts.data["sd_unet"] = unet_option
    p = processing.StableDiffusionProcessingTxt2Img(scripts=runner, prompt="a cat", width=64, height=64, steps=4,
                                                    cfg_scale=5.0, seed=2, refiner_checkpoint="tiny2",
                                                    refiner_switch_at=0.5)
    return processing.process_images(p)


def both(runner):
    fast, ref = generate(runner, "Automatic"), generate(runner, "None")
    diff = max((a - b).abs().max().item() for a, b in zip(fast.images, ref.images))
    return fast.infotexts[0].split("TensorRT: ", 1)[1], diff


@pytest.mark.parametrize("same_config", [True, False], ids=["reloaded in place", "loaded with load_model"])
def test_the_refiners_own_engines_serve_its_steps(start, same_config):
    runner = start(refiner_engines=True, same_config=same_config)
    value, diff = both(runner)
    assert diff < TOL
    assert value == f"first pass: {LABEL}; refiner tiny2: {LABEL}", value


def test_a_refiner_without_engines_is_reported_as_the_builtin_unet(start):
    runner = start(refiner_engines=False)
    value, diff = both(runner)
    assert diff < TOL
    assert value == f"first pass: {LABEL}; refiner tiny2: built-in UNet: no engine UNet for tiny2", value


def test_a_build_after_a_refiner_generation_is_for_the_selected_checkpoint(start):
    runner = start(refiner_engines=True)
    generate(runner, "Automatic")
    assert shared.sd_model.sd_checkpoint_info.name == "tiny2.safetensors"  # the refiner stays loaded
    assert sd_models.select_checkpoint().name == "tiny.safetensors"  # what the user selected
    target = current_model()
    assert target.path.name == "tiny.safetensors" and target.checkpoint.name == "tiny"
    assert target.checkpoint.sha256 == hashes.file_sha256[str(target.path)] and target.family == TINY
