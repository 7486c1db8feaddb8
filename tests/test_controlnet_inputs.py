"""Engines with ControlNet's residuals as inputs (issue 13): the layout against the UNet's own
blocks, the export and builds through the pipeline (ONNX Runtime and the torch backend) against
PyTorch with and without residuals, and the router's choices."""
import pytest
import torch

from sd_unet_trt.models.families import CONTROLNET_SUFFIX, family_named
from sd_unet_trt.models.unet import TINY_XL, UNetModel, seeded_unet, timestep_embedding
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.backends.torch_compiled import TorchCompiledBackend
from sd_unet_trt.trt_core.catalog import router_for_checkpoint
from sd_unet_trt.trt_core.export import sample_inputs, unpack_inputs
from sd_unet_trt.trt_core.identity import checkpoint_of_module
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import CallShape, Profile, Range
from sd_unet_trt.trt_core.unet_source import ModuleUNet
from sd_unet_trt.trt_core.workspace import Workspace

TINY = family_named("tiny")
PROFILE = Profile(Range(1, 1, 2), Range(64, 64, 96), Range(64, 64, 96), Range(75, 75, 150))


def residuals(family, rows, h, w, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator) * 0.2 for shape in family.control_shapes(rows, h, w)]


@pytest.mark.parametrize("name", ["tiny", "tiny-xl", "sd1", "sdxl"])
def test_layout_matches_the_unets_skip_connections(name):
    """13 residuals for SD1.x-style UNets and 10 for SDXL's, shaped as each input block's output
    (odd latent sizes included) and then the middle block's; then T2I-Adapter's features, shaped as
    the outputs of the blocks sd-webui-controlnet adds them after (2, 5, 8, 11; SDXL's 3, 5, 8)."""
    family = family_named(name)
    with torch.device("meta"):
        unet = UNetModel(family.unet_config())
    x, t, c, y, _ = unpack_inputs(family, sample_inputs(family, 2, 9, 7, 77, torch.float32, "meta"))
    seen = []
    hooks = [block.register_forward_hook(lambda m, i, out: seen.append(tuple(out.shape))) for block in unet.input_blocks]
    hooks.append(unet.middle_block.register_forward_hook(lambda m, i, out: seen.append(tuple(out.shape))))
    with torch.no_grad():
        unet(x, t, c, y)
    for hook in hooks:
        hook.remove()
    blocks = {"tiny": [2, 5, 8, 11], "sd1": [2, 5, 8, 11], "sdxl": [3, 5, 8], "tiny-xl": [3, 5]}[name]
    assert family.base_config.adapter_blocks() == blocks
    assert family.control_shapes(2, 9, 7) == seen + [seen[i] for i in blocks]
    assert len(seen) == {"tiny": 13, "sd1": 13, "sdxl": 10, "tiny-xl": 7}[name]
    with_inputs = family.with_controlnet()
    assert with_inputs.name == name + CONTROLNET_SUFFIX and family_named(with_inputs.name) == with_inputs
    names = tuple(f"control_{i}" for i in range(len(seen))) + tuple(f"adapter_{k}" for k in range(len(blocks)))
    assert with_inputs.plain == family and with_inputs.input_names[-len(names):] == names


def extension_forward(unet, x, t, c, residuals, features):
    """sd-webui-controlnet's UNet loop (scripts/hook.py, forward), written out on our blocks: each
    adapter feature added to the hidden state after its block, before the block's skip is kept;
    ControlNet's residuals added to the skips where the output blocks take them."""
    emb = unet.time_embed(timestep_embedding(t, unet.config.model_channels))
    h, hs, features = x, [], list(features)
    for i, block in enumerate(unet.input_blocks):
        h = block(h, emb, c)
        if i in unet.config.adapter_blocks():
            h = h + features.pop(0)
        hs.append(h)
    h = unet.middle_block(h, emb, c) + residuals[-1]
    skips = [s + r for s, r in zip(hs, residuals)]
    for block in unet.output_blocks:
        h = torch.cat([h, skips.pop()], dim=1)
        h = block(h, emb, c, skips[-1].shape[-2:] if skips else None)
    return unet.out(h)


def test_residuals_join_the_skips_and_the_middle_block():
    """Residual k is added to input block k's output where the output blocks take it; the last to
    the middle block's output; adapter features to the hidden state after their blocks: each input
    alone changes the output, zeros do not, and all of them together give the extension's loop."""
    unet = seeded_unet(TINY.unet_config(), seed=3)
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 700.0]), torch.randn(2, 77, 768)
    zeros = [torch.zeros(s) for s in TINY.control_shapes(2, 8, 8)]
    assert len(zeros) == 13 + 4
    with torch.no_grad():
        plain = unet(x, t, c)
        assert torch.equal(unet(x, t, c, control=zeros), plain)
        for k in (0, 5, 12, 13, 16):
            one = [z.clone() for z in zeros]
            one[k] = torch.randn(one[k].shape) * 0.5  # random: a constant is mostly normalized away
            assert (unet(x, t, c, control=one) - plain).abs().max() > 1e-3
        given = residuals(TINY, 2, 8, 8, seed=4)
        expected = extension_forward(unet, x, t, c, given[:13], given[13:])
        torch.testing.assert_close(unet(x, t, c, control=given), expected, rtol=1e-5, atol=1e-5)
        with pytest.raises(ValueError, match="takes 17 control inputs .* got 16"):
            unet(x, t, c, control=zeros[:16])


@pytest.fixture(scope="module")
def built(tiny_unet, tmp_path_factory):
    """A plain ONNX Runtime engine and one with ControlNet inputs, for the same checkpoint."""
    workspace = Workspace(tmp_path_factory.mktemp("ws"))
    checkpoint = checkpoint_of_module(tiny_unet, "tiny")
    source = ModuleUNet(tiny_unet, checkpoint, TINY)
    plain = build_engine(source, PROFILE, OnnxRuntimeBackend(), workspace, precision="fp32", device="cpu")
    control = build_engine(source, PROFILE, OnnxRuntimeBackend(), workspace, precision="fp32", device="cpu",
                           controlnet=True)
    return workspace, checkpoint, plain, control


def test_the_build_records_and_checks_the_controlnet_inputs(built):
    workspace, _, plain, control = built
    assert (plain.family, control.family) == ("tiny", "tiny-controlnet") and plain.id != control.id
    # checked against PyTorch with random residuals in every input, before it was registered
    assert control.accuracy["max_rel"] < 1e-3 and control.details["onnx_accuracy"]["max_rel"] < 1e-3
    assert control.details["onnx"] != plain.details["onnx"]  # an export of its own, with the inputs
    assert {e.id for e in workspace.manifest().entries()} == {plain.id, control.id}


def test_router_sends_controlnet_calls_to_the_engine_with_inputs(built, tiny_unet):
    workspace, checkpoint, plain, control = built
    router, _ = router_for_checkpoint(workspace, checkpoint.sha256, "cpu")
    x, t, c = torch.randn(5, 4, 12, 10), torch.linspace(5.0, 900.0, 5), torch.randn(5, 77, 768)
    res = residuals(TINY, 5, 12, 10)
    result = router.run(x, t, c, control=res)
    with torch.no_grad():
        expected = tiny_unet(x, t, c, control=res)
        assert (expected - tiny_unet(x, t, c)).norm() / expected.norm() > 0.01  # the residuals matter
    assert result.covered and result.chunks == 2  # 5 rows split over an engine of at most 4, residuals too
    assert result.engine == f"[onnxruntime fp32, ControlNet] {PROFILE.label()}"
    assert torch.allclose(result.output, expected, atol=1e-4)
    assert router.plan(router_call(x, c, res)).record.id == control.id
    # a plain call goes to the plain engine even though the other could take it with zeros
    assert router.plan(router_call(x, c)).record.id == plain.id


def router_call(x, c, control=None):
    return CallShape.of(x, c, None, control)


def test_a_plain_engine_never_takes_residuals_and_a_wrong_layout_is_not_covered(built, tiny_unet):
    workspace, checkpoint, plain, control = built
    router, _ = router_for_checkpoint(workspace, checkpoint.sha256, "cpu")
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([5.0, 500.0]), torch.randn(2, 77, 768)
    res = residuals(TINY, 2, 8, 8)
    router.records = [r for r in router.records if r.id == plain.id]
    result = router.run(x, t, c, control=res)
    assert not result.covered and "no ControlNet inputs" in result.reason
    router, _ = router_for_checkpoint(workspace, checkpoint.sha256, "cpu")
    result = router.run(x, t, c, control=res[:-1])
    assert not result.covered and "17 expected" in result.reason and not router.failed
    xl = residuals(family_named("tiny-xl"), 2, 8, 8)  # another family's layout
    assert not router.run(x, t, c, control=xl).covered and not router.failed


def test_an_engine_with_inputs_serves_plain_calls_with_zero_residuals(built, tiny_unet):
    workspace, checkpoint, plain, control = built
    router, _ = router_for_checkpoint(workspace, checkpoint.sha256, "cpu")
    router.records = [r for r in router.records if r.id == control.id]
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([5.0, 500.0]), torch.randn(2, 154, 768)
    result = router.run(x, t, c)
    with torch.no_grad():
        assert result.covered and torch.allclose(result.output, tiny_unet(x, t, c), atol=1e-4)


def test_sdxl_layout_through_onnx_runtime(tmp_path):
    """SDXL's blocks (y, no attention at the first level) with residual inputs."""
    family = family_named("tiny-xl")
    unet = seeded_unet(TINY_XL, seed=4)
    entry = build_engine(ModuleUNet(unet, checkpoint_of_module(unet, "xl"), family), Profile.static(1, 64, 64),
                         OnnxRuntimeBackend(), Workspace(tmp_path), precision="fp32", device="cpu", controlnet=True)
    router, _ = router_for_checkpoint(Workspace(tmp_path), entry.checkpoint.sha256, "cpu")
    x, t, c, y, res = unpack_inputs(family.with_controlnet(),
                                    sample_inputs(family.with_controlnet(), 2, 8, 8, 77, torch.float32, "cpu"))
    result = router.run(x, t, c, y, control=res)
    with torch.no_grad():
        assert result.covered and torch.allclose(result.output, unet(x, t, c, y, res), atol=1e-4)


def test_torch_backend_engine_with_controlnet_inputs(tiny_unet, tmp_path):
    """The torch backend compiles the inputs into its graph (on the CPU here: no CUDA graphs)."""
    checkpoint = checkpoint_of_module(tiny_unet, "tiny")
    entry = build_engine(ModuleUNet(tiny_unet, checkpoint, TINY), Profile.static(1, 64, 64), TorchCompiledBackend(),
                         Workspace(tmp_path), precision="fp32", device="cpu", controlnet=True)
    assert entry.family == "tiny-controlnet" and entry.accuracy["max_rel"] < 1e-3
    router, _ = router_for_checkpoint(Workspace(tmp_path), checkpoint.sha256, "cpu")
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([300.0]), torch.randn(1, 77, 768)
    res = residuals(TINY, 1, 8, 8, seed=5)
    with torch.no_grad():
        with_res, without = router.run(x, t, c, control=res), router.run(x, t, c)
        assert torch.allclose(with_res.output, tiny_unet(x, t, c, control=res), atol=1e-4)
        assert torch.allclose(without.output, tiny_unet(x, t, c), atol=1e-4)
