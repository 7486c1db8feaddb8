"""Engines serve only the weights the WebUI would compute with (in the WebUI double, with its Lora
extension): a LoRA at any multiplier, switched on and off, in place or in the functional mode, with
hires fix; a weight another extension changed in place; an engine that cannot take changed weights
and an unknown extension's patch fall back with the reason. Each generation with the engines is
compared with the same generation on the built-in UNet."""
from __future__ import annotations

import copy

import pytest
import torch

from tests.real_webui.tiny_lora import lora_tensors
from tests.webui_double import harness
from tests.webui_double.harness import register_ort_engines, webui_unet
from modules import errors, processing, sd_unet, shared
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.workspace import Workspace

SHA = "ab" * 32
SMALL = Profile(Range(1, 1, 2), Range(64, 64, 80), Range(64, 64, 80), Range(75, 75, 150))
LARGE = Profile(Range(1, 1, 2), Range(128, 128, 128), Range(128, 128, 128), Range(75, 75, 150))
TOL = 1e-3


@pytest.fixture(scope="module")
def session(tmp_path_factory, exported):
    """The tiny checkpoint with ONNX Runtime engines, and the Lora extension with two LoRAs."""
    unet, onnx_path = exported("tiny")
    root = tmp_path_factory.mktemp("webui-lora")
    register_ort_engines(Workspace(root), onnx_path, "tiny", CheckpointId.of(SHA, "tiny"), [SMALL, LARGE])
    shapes = {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    networks = harness.install_lora(root / "Lora", {"style": lora_tensors(shapes, seed=1, scale=0.5),
                                                    "other": lora_tensors(shapes, seed=2, scale=0.5)})
    runner, model = harness.start(root, webui_unet(unet), "tiny", SHA)
    yield runner, model, networks
    harness.stop()
    networks.uninstall()


@pytest.fixture
def webui(session):
    harness.reset_options()
    shared.opts.data["lora_functional"] = False
    yield session
    assert not errors.reported, errors.reported


def generate(runner, unet_option: str, prompt: str, **fields):
    shared.opts.data["sd_unet"] = unet_option
    p = processing.StableDiffusionProcessingTxt2Img(scripts=runner, prompt=prompt, width=64, height=64, steps=2,
                                                    cfg_scale=5.0, seed=3, **fields)
    return processing.process_images(p)


def run_both(runner, prompt: str, **fields):
    """(infotext value with the engines, |engines - built-in|, |built-in - built-in without networks|)."""
    fast = generate(runner, "Automatic", prompt, **fields)
    ref = generate(runner, "None", prompt, **fields)
    plain = generate(runner, "None", "a cat", **fields)
    diff = max((a - b).abs().max().item() for a, b in zip(fast.images, ref.images))
    effect = max((a - b).abs().max().item() for a, b in zip(ref.images, plain.images))
    value = fast.infotexts[0].split("TensorRT: ", 1)[1] if "TensorRT: " in fast.infotexts[0] else ""
    return value, diff, effect


@pytest.mark.parametrize("functional", [False, True], ids=["in place", "functional"])
def test_loras_switched_on_and_off_match_the_builtin_unet(webui, functional):
    runner, _, _ = webui
    shared.opts.data["lora_functional"] = functional
    sequence = ["<lora:style:1> a cat", "<lora:style:0.5> a cat", "a cat", "<lora:style:1> <lora:other:0.7> a cat",
                "<lora:other:1> a cat", "a cat"]
    for prompt in sequence:
        value, diff, effect = run_both(runner, prompt)
        assert diff < TOL, (prompt, value, diff)
        assert value.startswith("[onnxruntime fp32] 64-80x64-80 px"), (prompt, value)
        if "<lora" in prompt:
            assert effect > 0.05, (prompt, effect)  # the LoRA changes the image: this test can fail
            assert "LoRA applied to the engines: " in value, (prompt, value)
        else:
            assert "LoRA" not in value, (prompt, value)


def test_lora_with_hires_fix(webui):
    runner, _, _ = webui
    value, diff, effect = run_both(runner, "<lora:style:0.8> a cat", enable_hr=True, hr_scale=2.0)
    assert diff < TOL and effect > 0.05, (value, diff, effect)
    assert "first pass: [onnxruntime fp32] 64-80x64-80 px" in value and "hires pass: [onnxruntime fp32] 128x128 px" in value
    assert "LoRA applied to the engines: style:0.8" in value


def test_a_weight_another_extension_changed_in_place_reaches_the_engines(webui):
    """After LoRA generations every layer holds a (stale) backup: the WebUI runs the changed weight as
    it is, and so do the engines."""
    runner, model, _ = webui
    weight = model.model.diffusion_model.out[2].weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.mul_(1.5)
    try:
        value, diff, effect = run_both(runner, "a cat")
        changed = generate(runner, "None", "a cat")
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    plain = generate(runner, "None", "a cat")
    assert max((a - b).abs().max().item() for a, b in zip(changed.images, plain.images)) > 0.05  # it matters
    assert diff < TOL and "1 UNet weights differ from the checkpoint file; the engines use the live values" in value
    value, diff, _ = run_both(runner, "a cat")  # restored: the engines go back too
    assert diff < TOL and "differ" not in value


def test_an_unknown_extensions_patch_of_a_unet_layer_falls_back_with_the_reason(webui):
    runner, model, _ = webui
    layer = model.model.diffusion_model.input_blocks[1][1]
    handle = layer.register_forward_hook(lambda module, args, out: out * 1.01)
    try:
        value, diff, _ = run_both(runner, "a cat")
    finally:
        handle.remove()
    assert diff < TOL and value.startswith("fallback: an extension hooks UNet layer input_blocks.1.1"), value


def test_an_engine_that_cannot_take_changed_weights_falls_back_with_the_reason(webui, monkeypatch):
    from sd_unet_trt.trt_core.backends.base import WeightsUnsupported
    from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeEngine

    def refuse(self, weights):
        raise WeightsUnsupported("this engine keeps its weights")

    monkeypatch.setattr(OnnxRuntimeEngine, "set_weights", refuse)
    runner, _, _ = webui
    sd_unet.apply_unet("None")  # engines loaded afresh, with the refusing set_weights
    value, diff, effect = run_both(runner, "<lora:style:1> a cat")
    assert diff < TOL and effect > 0.05
    assert value.startswith("fallback: the engines cannot take the changed weights (this engine keeps its weights)"), value
    value, diff, _ = run_both(runner, "a cat")  # without the LoRA the engines serve again
    assert diff < TOL and value.startswith("[onnxruntime fp32] 64-80x64-80 px"), value


def test_tiling_and_a_module_class_from_an_unknown_extension_fall_back_with_the_reason(webui):
    """The WebUI's Tiling pads the convolutions circularly; token merging swaps a block's class for
    its own subclass. Engines compute neither."""
    runner, model, _ = webui
    conv = model.model.diffusion_model.input_blocks[0][0]
    conv.padding_mode = "circular"
    try:
        value, diff, _ = run_both(runner, "a cat")
    finally:
        conv.padding_mode = "zeros"
    assert diff < TOL and value == "fallback: UNet layer input_blocks.0.0 pads circular (Tiling); engines pad with zeros"
    block = model.model.diffusion_model.input_blocks[1][1]
    original = type(block)
    block.__class__ = type("MergedTokensBlock", (original,), {"forward": lambda self, *a, **k: original.forward(self, *a, **k)})
    try:
        value, diff, _ = run_both(runner, "a cat")
    finally:
        block.__class__ = original
    assert diff < TOL and value == ("fallback: MergedTokensBlock.forward (UNet layer input_blocks.1.1) comes from "
                                    f"{__name__}"), value


def test_a_layer_swapped_in_after_a_served_pass_reaches_the_engines(webui):
    """The hook keeps its walk of the UNet's modules between passes (module_walk): a layer replaced by
    another object after a pass the engines served must be read at the next pass (a stale walk would
    read the old layer's weights, the engines' own, and the images would differ)."""
    runner, model, _ = webui
    value, diff, _ = run_both(runner, "a cat")  # a pass that read (and kept the walk of) the UNet
    assert diff < TOL and "differ" not in value, value
    parent = model.model.diffusion_model.out
    original = parent[2]
    swapped = torch.nn.Conv2d(original.in_channels, original.out_channels, original.kernel_size, padding=original.padding)
    with torch.no_grad():
        swapped.weight.copy_(original.weight * 1.5)
        swapped.bias.copy_(original.bias)
    parent[2] = swapped
    try:
        value, diff, _ = run_both(runner, "a cat")
    finally:
        parent[2] = original
    assert diff < TOL and "1 UNet weights differ from the checkpoint file; the engines use the live values" in value, value
    value, diff, _ = run_both(runner, "a cat")  # the original back: so are the engines
    assert diff < TOL and "differ" not in value, value


def test_a_layer_of_an_unknown_class_added_after_a_served_pass_falls_back(webui):
    """A module put into the UNet after a served pass (another extension's wrapper, say) is judged at the
    next pass like every module: its class's forward comes from an unknown extension."""
    runner, model, _ = webui
    value, diff, _ = run_both(runner, "a cat")
    assert diff < TOL and not value.startswith("fallback"), value
    block = model.model.diffusion_model.input_blocks[1]
    original = block[1]
    wrapper = copy.copy(original)  # a new object sharing the layer's weights and submodules
    wrapper.__class__ = type("WrappedBlock", (type(original),), {"forward": lambda self, *a, **k: type(original).forward(self, *a, **k)})
    block[1] = wrapper
    try:
        value, diff, _ = run_both(runner, "a cat")
    finally:
        block[1] = original
    assert diff < TOL and value == f"fallback: WrappedBlock.forward (UNet layer input_blocks.1.1) comes from {__name__}", value
    value, diff, _ = run_both(runner, "a cat")
    assert diff < TOL and not value.startswith("fallback"), value
