"""FP8 with static per-tensor scales in the torch backend, and the implementation gate (#22).

Run here for real on the CPU: calibration on the tiny UNet's own activations, the FP8 layers
(torch casts to float8 and runs torch._scaled_mm on the CPU), the engine compiled by Inductor with
its scales stored in the file, the gate against the recipe fake-quantized in PyTorch, and its
refusal of a planted defect (one scale 2x off). Only the GPU can run cuBLASLt's FP8 kernels, their
fast accumulation and the fusion of the cast into Triton producer kernels: bench/quantized_speed.py
(`--plan issue22-sd15`) measures those, with the gate's figures beside a planted defect's."""
from __future__ import annotations

import copy

import pytest
import torch

from sd_unet_trt.models.families import TINY
from sd_unet_trt.trt_core.backends.torch_compiled import TorchCompiledBackend
from sd_unet_trt.trt_core.backends.torch_compiled import backend as torch_backend
from sd_unet_trt.trt_core.backends.torch_compiled.engine_file import read_metadata
from sd_unet_trt.trt_core.backends.torch_compiled.fake_quant import FakeQuantLinear, fake_quantized, stored_mismatches
from sd_unet_trt.trt_core.backends.torch_compiled.quantized import LAYER_SETS, transformer_layer_paths
from sd_unet_trt.trt_core.backends.torch_compiled.recipe import int8_problem, quantized_module, recipe_of
from sd_unet_trt.trt_core.backends.torch_compiled.static_fp8 import (FP8_MAX, StaticFP8Linear, calibrate_input_amax,
                                                                     input_scale)
from sd_unet_trt.trt_core.identity import checkpoint_of_module
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.quantize import calibration_inputs
from sd_unet_trt.trt_core.unet_source import ModuleUNet
from sd_unet_trt.trt_core.verify import (IMPLEMENTATION_TOLERANCE, VerificationError, implementation_error,
                                         require_implementation)
from sd_unet_trt.trt_core.workspace import Workspace
from tests.test_quantized_torch import _inputs, _rel, unet  # noqa: F401 (unet: the tiny UNet fixture)

PROFILE = Profile.static(1, 64, 64)
BLOCK = "input_blocks.1.1.transformer_blocks.0"
STATIC = {"activation_scales": "static"}


@pytest.fixture(scope="module")
def built(unet, tmp_path_factory):
    """One static FP8 engine of the tiny UNet through the whole pipeline (the gate included)."""
    root = tmp_path_factory.mktemp("fp8-static")
    source = ModuleUNet(unet, checkpoint_of_module(unet, "tiny"), TINY)
    entry = build_engine(source, PROFILE, TorchCompiledBackend(), Workspace(root), precision="fp8", device="cpu",
                         options=STATIC)
    return Workspace(root).engine_dir / entry.file, entry


@pytest.fixture
def engine(built):
    path, entry = built
    loaded = TorchCompiledBackend().load(path, entry.id, TINY, PROFILE, device="cpu")
    yield loaded
    loaded.close()




def test_recipe_options_are_checked_in_one_line():
    assert recipe_of("fp8", STATIC) == {"precision": "fp8", "layers": "transformer", "activation_scales": "static",
                                        "weight_scales": "tensor", "fast_accum": True}
    assert recipe_of("int8", {}) == {"precision": "int8", "layers": "transformer", "activation_scales": "row"}
    with pytest.raises(ValueError, match=r"^static activation scales are an fp8 recipe \(int8 runs per-row scales\)$"):
        recipe_of("int8", STATIC)
    with pytest.raises(ValueError, match=r"^unknown weight_scales 'block' \(known: tensor, channel\)$"):
        recipe_of("fp8", {**STATIC, "weight_scales": "block"})
    with pytest.raises(ValueError, match="belong to the static fp8 recipe"):
        recipe_of("fp8", {"fast_accum": False})


def test_the_layer_sets_are_feed_forward_everything_and_everything_but_qkv(unet):
    everything = set(transformer_layer_paths(unet, "transformer"))
    no_qkv = set(transformer_layer_paths(unet, "no_qkv"))
    feed_forward = set(transformer_layer_paths(unet, "feed_forward"))
    assert feed_forward < no_qkv < everything
    assert {p.rsplit(".", 2)[-2] + "." + p.rsplit(".", 1)[-1] for p in everything - no_qkv} == {
        f"{attn}.{proj}" for attn in ("attn1", "attn2") for proj in ("to_q", "to_k", "to_v")}
    assert all(p.endswith(("ff.net.0.proj", "ff.net.2")) for p in feed_forward)
    assert len(LAYER_SETS["no_qkv"]) == 4


def test_calibration_records_each_layers_largest_input(unet):
    calls = calibration_inputs(TINY, (8, 8), count=3)
    path = f"{BLOCK}.ff.net.2"
    seen = []
    handle = unet.get_submodule(path).register_forward_pre_hook(lambda m, a: seen.append(a[0].abs().max().item()))
    try:
        amax = calibrate_input_amax(unet, [path, f"{BLOCK}.attn1.to_q"], calls)
    finally:
        handle.remove()
    assert len(seen) == 3 and amax[path] == pytest.approx(max(seen)) and amax[f"{BLOCK}.attn1.to_q"] > 0
    assert not unet.get_submodule(path)._forward_pre_hooks  # the calibration's hooks are gone


@pytest.mark.parametrize("weight_scales", ["tensor", "channel"])
def test_a_static_layer_is_the_scaled_product_of_its_fp8_operands(weight_scales):
    linear = torch.nn.Linear(64, 48)
    x = torch.randn(3, 10, 64)
    layer = StaticFP8Linear(linear, amax=float(x.abs().max()), weight_scales=weight_scales)
    assert layer.input_scale.dim() == 0 and layer.input_scale.item() == pytest.approx(x.abs().max().item() / FP8_MAX)
    assert layer.weight.dtype == torch.float8_e4m3fn
    assert layer.weight_scale.shape == (() if weight_scales == "tensor" else (48,))
    fake = FakeQuantLinear(linear, recipe_of("fp8", {**STATIC, "weight_scales": weight_scales}), float(x.abs().max()))
    with torch.no_grad():
        out, expected = layer(x), fake(x)
    assert out.shape == (3, 10, 48) and torch.allclose(out, expected, atol=1e-4)
    assert 1e-3 < _rel(out, linear(x)) < 0.1
    with pytest.raises(ValueError, match="multiples of 16"):
        StaticFP8Linear(torch.nn.Linear(64, 40), 1.0)


def test_a_static_input_scale_clamps_what_calibration_did_not_see():
    linear = torch.nn.Linear(32, 16, bias=False)
    layer = StaticFP8Linear(linear, amax=1.0)
    x = torch.zeros(1, 32)
    x[0, 0] = 100.0  # far over the calibrated peak: saturates at the peak, no inf or NaN
    with torch.no_grad():
        out = layer(x)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, linear(torch.nn.functional.pad(torch.ones(1, 1), (0, 31))), rtol=0.07, atol=1e-3)


def test_the_quantized_module_is_a_copy_holding_every_calibrated_scale(unet):
    before = {name: p.clone() for name, p in unet.state_dict().items()}
    module, recipe = quantized_module(unet, TINY, (8, 8), recipe_of("fp8", {**STATIC, "quantize_layers": "no_qkv"}))
    paths = transformer_layer_paths(unet, "no_qkv")
    assert sorted(recipe["input_amax"]) == sorted(paths)
    for path in paths:
        layer = module.get_submodule(path)
        assert isinstance(layer, StaticFP8Linear)
        assert torch.equal(layer.input_scale, input_scale(recipe["input_amax"][path]))
    assert type(module.get_submodule(f"{BLOCK}.attn1.to_q")) is torch.nn.Linear
    assert all(torch.equal(before[name], p) for name, p in unet.state_dict().items())
    x, t, c = _inputs(1)
    with torch.no_grad():
        reference = fake_quantized(unet, recipe)
        # same stored values bit for bit; outputs apart only by FP8 rounding flips (verify.py says why)
        assert stored_mismatches(reference, dict(module.named_parameters()), prefix="") == []
        assert _rel(module(x, t, c), reference(x, t, c)) < IMPLEMENTATION_TOLERANCE[torch.float32]
        assert 1e-3 < _rel(module(x, t, c), unet(x, t, c)) < 0.3


def test_the_engine_stores_its_scales_and_the_pipeline_gates_it_on_its_recipe(built, engine, unet):
    path, entry = built
    record = read_metadata(path)
    recipe = record["recipe"]
    assert entry.details["recipe"] == {k: v for k, v in recipe.items() if k != "input_amax"}
    paths = transformer_layer_paths(unet, "transformer")
    assert sorted(recipe["input_amax"]) == sorted(paths)
    for layer in paths:  # every calibrated scale is in the file, as calibrated
        stored = engine.stored_weights()[f"unet.{layer}.input_scale"]
        assert stored.dim() == 0 and torch.equal(stored, input_scale(recipe["input_amax"][layer]))
        assert engine.stored_weights()[f"unet.{layer}.weight"].dtype == torch.float8_e4m3fn
    accuracy = entry.accuracy
    assert 0 <= accuracy["implementation_rel_error"] <= accuracy["implementation_tolerance"] == \
        IMPLEMENTATION_TOLERANCE[torch.float32]
    assert 0 < accuracy["loop_rel_error"] and "loop_image_psnr_db" in accuracy  # the recipe's drift, beside it


@pytest.mark.parametrize("scale", ["input_scale", "weight_scale"])
def test_the_gate_refuses_an_engine_with_one_scale_off_by_2x(built, engine, unet, scale):
    path, _ = built
    gate = TorchCompiledBackend().implementation_gate
    passed = gate(engine, path, unet, PROFILE, torch.device("cpu"), "the engine")
    assert 0 <= passed["implementation_rel_error"] <= passed["implementation_tolerance"]
    name = f"unet.{BLOCK}.ff.net.2.{scale}"
    reference = fake_quantized(unet, read_metadata(path)["recipe"])
    with torch.no_grad():
        engine.stored_weights()[name].mul_(2)  # the planted defect: one layer's scale off by 2x in the engine
    with pytest.raises(VerificationError, match=rf"^the engine does not hold its quantized recipe: 1 stored weights "
                                                rf"or scales differ from what the recipe makes of the PyTorch UNet "
                                                rf"\({name}\); it was not registered$"):
        gate(engine, path, unet, PROFILE, torch.device("cpu"), "the engine")
    assert stored_mismatches(reference, engine.stored_weights()) == [name]
    bad = implementation_error(engine, reference, TINY, PROFILE, "cpu")
    if scale == "weight_scale":  # the layer's output doubles: the output check sees it too
        assert bad > 1.5 * passed["implementation_rel_error"]
    else:  # FP8 is a float format: a power-of-two input scale moves exponents (only subnormals round
        # differently), so the output hardly moves (measured 5.47% against 5.52%): only the stored bits show it
        assert bad < 1.1 * passed["implementation_rel_error"]


def test_an_output_far_from_the_recipe_is_refused_in_one_line():
    assert require_implementation(0.02, torch.float32, "e") == {"implementation_rel_error": 0.02,
                                                                "implementation_tolerance": 0.10}
    for error in (0.5, float("nan")):
        with pytest.raises(VerificationError, match=r"^e does not compute its quantized recipe: it differs from the "
                                                    r"recipe fake-quantized in PyTorch by .*, over the 10% allowed"):
            require_implementation(error, torch.float32, "e")


def test_new_weights_are_quantized_per_tensor_into_the_static_engine(built, engine, unet):
    """A LoRA on a quantized projection: the weight and its one scale are rewritten; the calibrated
    input scales stay, so the engine computes the changed UNet's recipe with the same input scales."""
    path, _ = built
    recipe = read_metadata(path)["recipe"]
    name = f"{BLOCK}.ff.net.2.weight"
    changed = copy.deepcopy(unet)
    with torch.no_grad():
        changed.get_parameter(name).mul_(1.7).add_(0.01)
    x, t, c = _inputs(3)
    with torch.no_grad():
        original = engine(x, t, c)
        engine.set_weights({name: changed.get_parameter(name)})
        assert stored_mismatches(fake_quantized(changed, recipe), engine.stored_weights()) == []
        assert stored_mismatches(fake_quantized(unet, recipe), engine.stored_weights()) == [
            f"unet.{name.removesuffix('.weight')}.{part}" for part in ("weight", "weight_scale")]
        assert _rel(engine(x, t, c), original) > 1e-2
        engine.set_weights({name: unet.get_parameter(name)})
        assert torch.equal(engine(x, t, c), original)


def test_int8_is_offered_by_the_torch_backend_only_below_hopper(monkeypatch):
    assert int8_problem(None) is None and int8_problem((8, 6)) is None and int8_problem((8, 9)) is None
    assert int8_problem((9, 0)).startswith("int8 on the torch backend is slower than fp16 on this GPU "
                                           "(compute capability 9.0")
    assert "use fp8" in int8_problem((10, 0))
    # the backend asks the GPU torch sees (a stand-in here: this machine has none)
    monkeypatch.setattr(torch_backend.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch_backend.torch.cuda, "get_device_capability", lambda *a: (9, 0))
    backend = TorchCompiledBackend()
    assert backend.precision_problem("int8") == int8_problem((9, 0))
    assert backend.precision_problem("fp8") is None and backend.precision_problem("fp16") is None
    monkeypatch.setattr(torch_backend.torch.cuda, "get_device_capability", lambda *a: (8, 6))
    assert backend.precision_problem("int8") is None
    monkeypatch.setattr(torch_backend.torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert backend.precision_problem("fp8").startswith("fp8 engines need a GPU of compute capability 8.9")
