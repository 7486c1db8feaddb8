"""sd-webui-controlnet's generations through the engines, in the WebUI double with a stand-in for
ControlNet's UNet hook (tests/webui_double/controlnet): the residual wiring of the bridge, unit
weights and start/end, and every fallback with its reason. Each generation runs with sd_unet
"Automatic" (the bridge and our engine) and "None" (the built-in UNet under ControlNet's own
forward), and the latents are compared."""
from __future__ import annotations

import pytest
import torch

from tests.webui_double import harness
from tests.webui_double.controlnet import ControlNetScript, TinyControlModel, Unit
from tests.webui_double.harness import register_ort_engines, webui_unet
from modules import errors, processing, shared
from sd_unet_trt.models import unet as arch
from sd_unet_trt.models.families import TINY, family_named
from sd_unet_trt.scripts.trt_unet_webui.live_weights import replaced
from sd_unet_trt.trt_core.export import export_onnx
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.workspace import Workspace

SHA = "ef" * 32
XL_SHA = "a7" * 32
PROFILE = Profile(Range(1, 1, 2), Range(64, 64, 64), Range(64, 64, 64), Range(75, 75, 75))
TOL = 1e-3


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, exported):
    unet, plain_onnx = exported("tiny")
    control_onnx = export_onnx(unet, TINY.with_controlnet(), tmp_path_factory.mktemp("cn") / "onnx", weights="fp32")
    return unet, plain_onnx, control_onnx.onnx_path


def start(tmp_path, tiny, control_engines=True, plain_engines=True):
    unet, plain_onnx, control_onnx = tiny
    workspace = Workspace(tmp_path)
    checkpoint = CheckpointId.of(SHA, "tiny")
    if plain_engines:
        register_ort_engines(workspace, plain_onnx, "tiny", checkpoint, [PROFILE])
    if control_engines:
        register_ort_engines(workspace, control_onnx, "tiny-controlnet", checkpoint, [PROFILE])
    return harness.start(tmp_path, webui_unet(unet), "tiny", SHA)


@pytest.fixture
def webui(tmp_path, tiny):
    started = []

    def make(**kwargs):
        started.append(start(tmp_path, tiny, **kwargs))
        return started[-1]
    yield make
    if started:
        harness.stop()
    assert not errors.reported, errors.reported


def units(*specs, config=arch.TINY):
    """Units of seeded tiny control models: (seed, weight, start, end[, "adapter"]) each."""
    out = []
    for seed, weight, begin, end, *kind in specs:
        hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        out.append(Unit(TinyControlModel(config, seed, adapter=kind == ["adapter"]), hint, weight, begin, end))
    return out


def generate(runner, unet_option, controlnet=None, **fields):
    shared.opts.data["sd_unet"] = unet_option
    scripts = runner
    if controlnet is not None:
        scripts = type(runner)()
        scripts.alwayson_scripts = [*runner.alwayson_scripts, controlnet]
        scripts.scripts = list(scripts.alwayson_scripts)
    p = processing.StableDiffusionProcessingTxt2Img(scripts=scripts, **{
        "prompt": "a cat", "width": 64, "height": 64, "steps": 4, "cfg_scale": 5.0, "seed": 1, **fields})
    return processing.process_images(p)


def compare(runner, make_controlnet, **fields):
    fast = generate(runner, "Automatic", make_controlnet(), **fields)
    ref = generate(runner, "None", make_controlnet(), **fields)
    diff = max((a - b).abs().max().item() for a, b in zip(fast.images, ref.images))
    return fast, ref, diff


def routing(out) -> str:
    return out.infotexts[0].split("TensorRT: ", 1)[1]


WITH_INPUTS, PLAIN = f"[onnxruntime fp32, ControlNet] {PROFILE.label()}", f"[onnxruntime fp32] {PROFILE.label()}"
CASES = [
    ("one unit", [(1, 1.0, 0.0, 1.0)], WITH_INPUTS),
    ("two units, different weights", [(1, 0.7, 0.0, 1.0), (2, 1.3, 0.0, 1.0)], WITH_INPUTS),
    # steps 1 and 2 of 4 take residuals; the others are the plain UNet's calls: the plain engine's
    ("start and end: guidance from step 1 to 2 of 4", [(1, 1.0, 0.25, 0.5)],
     f"{PLAIN} (2 calls), {WITH_INPUTS} (2 calls)"),
    ("one T2I-Adapter", [(3, 1.0, 0.0, 1.0, "adapter")], WITH_INPUTS),
    ("a ControlNet and a T2I-Adapter", [(1, 0.8, 0.0, 1.0), (3, 0.6, 0.0, 1.0, "adapter")], WITH_INPUTS),
]


@pytest.mark.parametrize("name,specs,routed", CASES, ids=[c[0] for c in CASES])
def test_controlnet_steps_run_on_the_engine_with_its_residuals(webui, name, specs, routed):
    runner, _ = webui()
    fast, ref, diff = compare(runner, lambda: ControlNetScript(units(*specs)))
    plain = generate(runner, "None")
    effect = max((a - b).abs().max().item() for a, b in zip(ref.images, plain.images))
    assert effect > 0.05, "ControlNet must change the image for the comparison to mean anything"
    assert diff < TOL, (name, diff)
    assert routing(fast) == routed, fast.infotexts[0]


def test_steps_outside_every_units_guidance_may_use_a_plain_engine(webui):
    """Only plain engines: the steps ControlNet adds nothing to run on them; the others fall back."""
    runner, _ = webui(control_engines=False)
    fast, ref, diff = compare(runner, lambda: ControlNetScript(units((1, 1.0, 0.5, 1.0))))
    assert diff < TOL
    text = routing(fast)
    assert PLAIN in text
    assert "no engine of this checkpoint takes ControlNet's residuals" in text, text


REFUSED = [
    ("reference", "an extension replaced the forward of UNet layer input_blocks.1"),
    ("encoder", "something adds to the UNet's encoder after block 1, where engines take nothing"),
]


@pytest.mark.parametrize("variant,reason", REFUSED, ids=[r[0] for r in REFUSED])
def test_what_engines_cannot_reproduce_falls_back_with_its_reason(webui, variant, reason):
    runner, _ = webui()
    fast, ref, diff = compare(runner, lambda: ControlNetScript(units((1, 1.0, 0.0, 1.0)), variant))
    assert diff < TOL
    text = routing(fast)
    assert reason in text and "[onnxruntime" not in text, text


def test_another_extensions_forward_falls_back_and_is_left_in_place(webui):
    runner, sd_model = webui()
    unet = sd_model.model.diffusion_model

    class Other(ControlNetScript):
        def process(self, p, *args):
            original = unet.forward

            def scaled(x, *a, **k):
                return original(x, *a, **k) * 0.5
            unet.forward = scaled

        def postprocess(self, p, processed, *args):
            del unet.forward

    fast, ref, diff = compare(runner, lambda: Other([]))
    assert diff < TOL
    assert "another extension replaced the UNet's forward" in routing(fast)


@pytest.mark.parametrize("variant", ["", "reference"])
def test_after_controlnet_plain_generations_use_the_plain_engine(webui, variant):
    """Also after reference-only, whose restore leaves the layers' own forwards bound on them."""
    runner, sd_model = webui()
    generate(runner, "Automatic", ControlNetScript(units((1, 1.0, 0.0, 1.0)), variant))
    assert replaced(sd_model.model.diffusion_model, "forward") is None  # ControlNet's restore took our wrapper too
    out = generate(runner, "Automatic")
    assert routing(out) == PLAIN


def test_sdxl_blocks_and_y_through_the_bridge(tmp_path, exported):
    """SDXL's layout (10 residuals at full size, 7 in the tiny one; y through label_emb; adapter
    features after blocks 3 and 5 and the middle block) and its sgm UNet class, with a ControlNet
    and a T2I-Adapter."""
    unet, _ = exported("tiny-xl")
    family = family_named("tiny-xl")
    onnx = export_onnx(unet, family.with_controlnet(), tmp_path / "onnx", weights="fp32").onnx_path
    register_ort_engines(Workspace(tmp_path), onnx, "tiny-xl-controlnet", CheckpointId.of(XL_SHA, "xl"), [PROFILE])
    runner, _ = harness.start(tmp_path, webui_unet(unet, sgm=True), "xl", XL_SHA, sgm=True)
    try:
        make = lambda: ControlNetScript(units((3, 1.0, 0.0, 1.0), (4, 0.7, 0.0, 1.0, "adapter"), config=arch.TINY_XL))
        fast, ref, diff = compare(runner, make)
        plain = generate(runner, "None")
        assert max((a - b).abs().max().item() for a, b in zip(ref.images, plain.images)) > 0.05
        assert diff < TOL
        assert routing(fast) == f"[onnxruntime fp32, ControlNet] {PROFILE.label()}", fast.infotexts[0]
    finally:
        harness.stop()
    assert not errors.reported, errors.reported
