"""INT8 and FP8 in the torch backend (#12): per-row quantized linear layers, an INT8 engine of the
tiny model built through the whole pipeline on the CPU (ONNX check, Inductor compile, the engine
check and the denoising-loop gate, manifest), new weights re-quantized in place (a LoRA needs no
calibration), and the gate refusing a build it cannot pass."""
from __future__ import annotations

import copy

import pytest
import torch

from sd_unet_trt.models.families import TINY
from sd_unet_trt.models.unet import seeded_unet
from sd_unet_trt.models.vae import decode, seeded_decoder
from sd_unet_trt.trt_core import quality
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.backends.torch_compiled import TorchCompiledBackend
from sd_unet_trt.trt_core.backends.torch_compiled.engine_file import read_metadata
from sd_unet_trt.trt_core.backends.torch_compiled.quantized import (LAYER_SETS, QuantizedLinear, quantize_rows,
                                                                    quantized_linears)
from sd_unet_trt.trt_core.identity import checkpoint_of_module
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.unet_source import ModuleUNet
from sd_unet_trt.trt_core.verify import VerificationError
from sd_unet_trt.trt_core.workspace import Workspace

PROFILE = Profile.static(1, 64, 64)
BLOCK = "input_blocks.1.1.transformer_blocks.0"


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _inputs(seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.rand(2, generator=g) * 999, torch.randn(2, 77, 768, generator=g)


@pytest.fixture(scope="module")
def unet():
    return seeded_unet(TINY.unet_config(), seed=5).eval()


@pytest.fixture(scope="module")
def built(unet, tmp_path_factory):
    root = tmp_path_factory.mktemp("int8-torch")
    source = ModuleUNet(unet, checkpoint_of_module(unet, "tiny"), TINY)
    entry = build_engine(source, PROFILE, TorchCompiledBackend(), Workspace(root), precision="int8", device="cpu")
    return Workspace(root), entry


@pytest.mark.parametrize("precision, dtype, qmax", [("int8", torch.int8, 127), ("fp8", torch.float8_e4m3fn, 448)])
def test_rows_are_quantized_symmetrically_with_one_scale_each(precision, dtype, qmax):
    t = torch.randn(5, 32) * torch.arange(1, 6)[:, None]
    values, scale = quantize_rows(t, precision)
    assert values.dtype == dtype and scale.shape == (5,) and scale.dtype == torch.float32
    assert torch.allclose(values.float().abs().amax(dim=1), torch.full((5,), float(qmax)))  # each row's peak
    back = values.float() * scale[:, None]
    assert _rel(back, t) < (0.01 if precision == "int8" else 0.05)


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_a_quantized_layer_is_the_scaled_product_of_its_quantized_operands(precision):
    linear = torch.nn.Linear(64, 48)
    layer = QuantizedLinear(linear, precision)
    assert set(dict(layer.named_parameters())) == {"weight", "weight_scale", "bias"} and layer.source is linear.weight
    x = torch.randn(3, 10, 64)
    xq, xs = quantize_rows(x.reshape(-1, 64), precision)
    exact = (xq.float() * xs[:, None]) @ (layer.weight.float() * layer.weight_scale[:, None]).t() + linear.bias
    with torch.no_grad():
        out = layer(x)
        assert out.shape == (3, 10, 48) and torch.allclose(out.reshape(-1, 48), exact, atol=1e-4)
        assert _rel(out, linear(x)) < (0.02 if precision == "int8" else 0.08)
    with pytest.raises(ValueError, match="multiples of 16"):
        QuantizedLinear(torch.nn.Linear(64, 40), precision)


def test_the_chosen_layers_are_quantized_on_a_copy_and_the_rest_is_shared(unet):
    before = {name: p.clone() for name, p in unet.state_dict().items()}
    quantized = quantized_linears(unet, "fp8")
    layers = [m for m in quantized.modules() if isinstance(m, QuantizedLinear)]
    blocks = sum(1 for name, _ in unet.named_modules() if name.endswith("transformer_blocks.0"))
    assert len(layers) == blocks * len(LAYER_SETS["transformer"])
    assert quantized.get_submodule(f"{BLOCK}.attn1.to_q").source is unet.get_parameter(f"{BLOCK}.attn1.to_q.weight")
    assert quantized.get_submodule("input_blocks.1.0.in_layers.2") is unet.get_submodule("input_blocks.1.0.in_layers.2")
    assert not any(isinstance(m, QuantizedLinear) for m in unet.modules())
    assert all(torch.equal(before[name], p) for name, p in unet.state_dict().items())
    feed_forward = quantized_linears(unet, "int8", "feed_forward")
    assert isinstance(feed_forward.get_submodule(f"{BLOCK}.ff.net.2"), QuantizedLinear)
    assert isinstance(feed_forward.get_submodule(f"{BLOCK}.attn1.to_q"), torch.nn.Linear)
    x, t, c = _inputs(1)
    with torch.no_grad():
        assert 1e-4 < _rel(quantized(x, t, c), unet(x, t, c)) < 0.3
    with pytest.raises(ValueError, match="unknown quantized layer set 'all'"):
        quantized_linears(unet, "int8", "all")


def test_the_pipeline_builds_an_int8_engine_held_to_a_whole_denoising_loop(built, unet):
    workspace, entry = built
    assert entry.precision == "int8" and entry.backend == "torch"
    accuracy = entry.accuracy
    assert accuracy["max_rel"] <= accuracy["tolerance"] == 0.15
    assert 0 < accuracy["loop_rel_error"] <= accuracy["loop_tolerance"] == quality.LOOP_TOLERANCE["int8"]
    assert accuracy["loop_mean_rel_error"] <= accuracy["loop_rel_error"]
    assert (accuracy["loop_cases"], accuracy["loop_steps"]) == (4, 20)
    assert 10 < accuracy["loop_image_psnr_db"] < quality.PSNR_CAP_DB  # decoded through SD's VAE decoder
    assert entry.details["quantized_layers"] == "transformer" and entry.details["quantized_weights"] > 0
    assert [e.id for e in workspace.manifest().entries()] == [entry.id]
    stored = read_metadata(workspace.engine_dir / entry.file)["weights"]
    quantized = [w for w in stored if w.get("quantized")]
    assert len(quantized) == entry.details["quantized_weights"] and {w["dtype"] for w in quantized} == {"int8"}
    assert all(w["sources"] for w in quantized)  # each names the UNet weight it was made from
    # the float weights a quantized layer was made from are not stored beside it
    float_copies = {w["sources"][0][0] for w in stored if not w.get("quantized") and w["sources"]}
    assert not float_copies & {w["sources"][0][0] for w in quantized}
    engine = TorchCompiledBackend().load(workspace.engine_dir / entry.file, entry.id, TINY, PROFILE, device="cpu")
    try:
        x, t, c = _inputs(2)
        with torch.no_grad():
            expected = quantized_linears(unet, "int8")(x, t, c)
            assert _rel(engine(x, t, c), expected) < 0.03  # Inductor rounds x/scale its own way
            assert _rel(engine(x, t, c), unet(x, t, c)) < 0.15
    finally:
        engine.close()


def test_new_weights_are_requantized_in_place_and_the_old_ones_bring_it_back(built, unet):
    """A LoRA on a quantized projection: no calibration needed, the engine quantizes the new value per
    row; it then computes what the changed UNet, quantized the same way, computes."""
    workspace, entry = built
    engine = TorchCompiledBackend().load(workspace.engine_dir / entry.file, entry.id, TINY, PROFILE, device="cpu")
    q, conv = f"{BLOCK}.attn1.to_q.weight", "input_blocks.1.0.in_layers.2.weight"
    changed = copy.deepcopy(unet)
    with torch.no_grad():
        for name in (q, conv):
            changed.get_parameter(name).mul_(1.5).add_(0.05)
    x, t, c = _inputs(3)
    try:
        with torch.no_grad():
            original = engine(x, t, c)
            assert set(engine.weights_of([q, conv])) == {conv}  # a quantized copy is not the built value
            engine.set_weights({name: changed.get_parameter(name) for name in (q, conv)})
            moved = engine(x, t, c)
            assert _rel(moved, quantized_linears(changed, "int8")(x, t, c)) < 0.03
            assert _rel(moved, original) > 0.05
            engine.set_weights({name: unet.get_parameter(name) for name in (q, conv)})
            assert torch.equal(engine(x, t, c), original)
    finally:
        engine.close()


def test_a_build_over_the_loop_tolerance_is_refused_and_leaves_nothing(unet, tmp_path, monkeypatch):
    monkeypatch.setitem(quality.LOOP_TOLERANCE, "fp8", 1e-6)
    source = ModuleUNet(unet, checkpoint_of_module(unet, "tiny"), TINY)
    with pytest.raises(VerificationError, match=r"images drift from the PyTorch UNet's by .*% \(final latent of a "
                                                r"20-step loop, worst of 4 cases\), over the 0% allowed for fp8"):
        build_engine(source, PROFILE, TorchCompiledBackend(), Workspace(tmp_path), precision="fp8", device="cpu")
    engines = tmp_path / "Unet-trt"
    assert not engines.exists() or not [p for p in engines.iterdir() if p.name.endswith(".torch.zip")]
    assert not Workspace(tmp_path).manifest().path.exists() or not Workspace(tmp_path).manifest().entries()


def test_onnx_runtime_says_which_backends_build_quantized_engines(unet, tmp_path):
    source = ModuleUNet(unet, checkpoint_of_module(unet, "tiny"), TINY)
    with pytest.raises(ValueError, match="precision: int8 engines are built by the torch and TensorRT backends"):
        build_engine(source, PROFILE, OnnxRuntimeBackend(), Workspace(tmp_path), precision="int8")
    assert not (tmp_path / "Unet-onnx").exists()


def test_the_decoder_is_sds_vae_decoder_and_psnr_reads_its_images():
    """Checked once against ldm's own Decoder in the WebUI's repositories (ch 128, ch_mult 1,2,4,4, two
    ResNet blocks a level, post_quant_conv): the same 49,490,199 parameters in the same shapes."""
    decoder = seeded_decoder()
    assert sum(p.numel() for p in decoder.parameters()) == 49_490_199
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    image = decode(decoder, latent, "sd1")
    assert image.shape == (1, 3, 64, 64) and 0 <= image.min() and image.max() <= 1 and image.std() > 0.05
    assert quality.psnr_db(image, image) == quality.PSNR_CAP_DB
    near = decode(decoder, latent + 0.01 * torch.randn(latent.shape, generator=torch.Generator().manual_seed(1)), "sd1")
    far = decode(decoder, latent + 0.5 * torch.randn(latent.shape, generator=torch.Generator().manual_seed(1)), "sd1")
    assert quality.PSNR_CAP_DB > quality.psnr_db(near, image) > quality.psnr_db(far, image) > 0
    assert not torch.equal(decode(decoder, latent, "sdxl"), image)  # SDXL's latents are scaled differently
