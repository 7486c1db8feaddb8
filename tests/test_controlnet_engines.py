"""ControlNet engines (issue 23), on this CPU with the real ONNX Runtime and real files: a tiny
ControlNet made by our model code with seeded random weights (none zero, its zero convolutions
neither: they would make every residual vanish and every check pass), saved as safetensors in
sd-webui-controlnet's two key layouts; read back with its architecture inferred from the weights;
exported in the child process, checked, built, registered under the file's sha256 and served
through `controlnet_engines` against the PyTorch module; files that are not ControlNets get one
line; the UNet's router never takes a ControlNet engine; `list` and `remove` handle them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sd_unet_trt.errors import UserError
from sd_unet_trt.models import controlnet as cn
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.catalog import catalog, router_for_checkpoint
from sd_unet_trt.trt_core.cli import main
from sd_unet_trt.trt_core.controlnet import (UnsupportedControlNet, build_controlnet_engine, controlnet_engines,
                                             controlnet_file_sha256, load_controlnet)
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.workspace import Workspace

PROFILE = Profile(Range(1, 1, 2), Range(64, 64, 96), Range(64, 64, 128), Range(75, 75, 150))


def save(model: torch.nn.Module, path: Path, prefix: str) -> Path:
    save_file({prefix + k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def call(config: cn.ControlNetConfig, rows: int, latent_h: int, latent_w: int, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 4, latent_h, latent_w, generator=g)
    hint = torch.rand(rows, config.hint_channels, latent_h * 8, latent_w * 8, generator=g)
    timesteps = torch.rand(rows, generator=g) * 999
    context = torch.randn(rows, 77, config.context_dim, generator=g)
    y = torch.randn(rows, config.adm_in_channels, generator=g) if config.adm_in_channels else None
    return x, hint, timesteps, context, y


def assert_close(out: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    assert len(out) == len(ref)
    for o, r in zip(out, ref):
        assert o.shape == r.shape and o.dtype == r.dtype
        assert float((o - r).abs().max()) <= 1e-4 * max(1.0, float(r.abs().max()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    model = cn.seeded_controlnet(cn.TINY, seed=3)
    for name, p in model.named_parameters():  # the premise of every comparison below
        p = p.detach()
        assert float(p.abs().min()) > 0 or float((p == 0).float().mean()) < 1e-4, f"{name} is (nearly) all zeros"
    folder = tmp_path_factory.mktemp("controlnets")
    return model, save(model, folder / "tiny_cn.safetensors", "control_model."), save(model, folder / "bare.safetensors", "")


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    model, path, _ = tiny
    workspace = Workspace(tmp_path_factory.mktemp("workspace"))
    entry = build_controlnet_engine(workspace, path, PROFILE, OnnxRuntimeBackend(), "fp32", device="cpu")
    return workspace, entry


@pytest.mark.parametrize("layout", [0, 1], ids=["control_model-prefix", "bare-keys"])
def test_both_key_layouts_load_into_our_model_with_the_same_outputs(tiny, layout):
    model, *paths = tiny
    loaded, config = load_controlnet(paths[layout])
    assert config == cn.TINY
    args = call(config, 2, 8, 12)
    with torch.no_grad():
        assert_close(loaded(*args), model(*args))


@pytest.mark.parametrize("config", [cn.SD15, cn.SDXL, cn.TINY_XL,
                                    cn.ControlNetConfig(**{**cn.SD15.__dict__, "context_dim": 1024}),  # SD2.x
                                    cn.ControlNetConfig(**{**cn.SDXL.__dict__, "transformer_depth": (0, 0, 1),
                                                           "transformer_depth_middle": 1}),  # SDXL "mid"
                                    cn.ControlNetConfig(**{**cn.SDXL.__dict__, "hint_channels": 4})],
                         ids=["sd15", "sdxl", "tiny-xl", "sd2", "sdxl-mid", "hint-4"])
def test_the_architecture_is_read_off_the_weights(config):
    with torch.device("meta"):
        state = cn.ControlNetModel(config).state_dict()
    assert cn.config_from_state_dict(state) == config


def test_sdxl_small_controlnet_without_attention_is_read_too():
    # sd-webui-controlnet's controlnet_sdxl_small_config: no transformer blocks anywhere
    small = cn.ControlNetConfig(**{**cn.SDXL.__dict__, "transformer_depth": (0, 0, 0), "transformer_depth_middle": 0})
    with torch.device("meta"):
        state = cn.ControlNetModel(small).state_dict()
    assert not any("attn2" in k for k in state)
    assert cn.config_from_state_dict(state) == small


@pytest.mark.parametrize("keys, says", [
    ({"lora_controlnet": [1], "input_hint_block.0.weight": [16, 3, 3, 3]}, "Control-LoRA"),
    ({"conv_in.weight": [320, 192, 3, 3], "body.0.block1.weight": [320, 320, 3, 3]}, "T2I-Adapter"),
    ({"adapter.body.0.resnets.0.block1.weight": [320, 320, 3, 3]}, "T2I-Adapter"),
    ({"lllite_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.down.weight": [32, 320]}, "ControlNet-LLLite"),
    ({"image_proj.proj.weight": [3072, 1024], "ip_adapter.1.to_k_ip.weight": [320, 768]}, "IP-Adapter"),
    ({"controlnet_cond_embedding.conv_in.weight": [16, 3, 3, 3], "control_type_proj.linear_1.weight": [4, 4]},
     "diffusers' layout with layers a ControlNet does not have (control_type_proj.linear_1.weight"),
    ({"model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3]}, "no ControlNet weights"),
])
def test_a_file_that_is_no_controlnet_gets_one_line_naming_it(tmp_path, keys, says):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(path))
    with pytest.raises(UnsupportedControlNet) as caught:
        load_controlnet(path)
    line = str(caught.value)
    assert says in line and "other.safetensors" in line and "\n" not in line


def test_the_cli_refuses_a_foreign_file_in_one_line_and_writes_nothing(tmp_path, capsys):
    path = tmp_path / "adapter.safetensors"
    save_file({"conv_in.weight": torch.zeros(8, 192, 3, 3)}, str(path))
    code = main(["build-controlnet", str(path), "--dir", str(tmp_path / "ws"), "--device", "cpu",
                 "--backend", "onnxruntime", "--precision", "fp32"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "T2I-Adapter" in err
    assert not (tmp_path / "ws").exists()


def test_build_registers_the_engine_under_the_files_sha256(tiny, built):
    _, path, _ = tiny
    workspace, entry = built
    assert entry.checkpoint.sha256 == controlnet_file_sha256(path) and entry.checkpoint.name == "tiny_cn"
    assert entry.family == "controlnet-model-sd1" and entry.backend == "onnxruntime" and entry.precision == "fp32"
    assert cn.ControlNetConfig.from_dict(entry.details["controlnet"]) == cn.TINY
    assert entry.accuracy["max_rel"] < 1e-5 and entry.details["onnx_accuracy"]["max_rel"] < 1e-5
    assert workspace.manifest().file_path(entry).is_file()
    [item] = [i for i in catalog(workspace, "cpu") if i.entry.id == entry.id]
    assert item.status.ready, item.status.reason


@pytest.mark.parametrize("rows, latent", [(2, (8, 12)), (1, (8, 16)), (6, (12, 12))], ids=["opt", "min", "split"])
def test_engines_serve_calls_as_the_pytorch_controlnet(tiny, built, rows, latent):
    model, path, _ = tiny
    workspace, entry = built
    engines = controlnet_engines(workspace, controlnet_file_sha256(path), device="cpu")
    try:
        args = call(cn.TINY, rows, *latent)
        assert engines.why_not(*args) == ""
        out = engines.run(*args)  # 6 rows: more than the engine's 4, so two runs of 3 joined
        with torch.no_grad():
            assert_close(out, model(*args))
    finally:
        engines.close()


def test_a_call_no_engine_covers_gives_none_and_one_line(tiny, built):
    _, path, _ = tiny
    workspace, _ = built
    engines = controlnet_engines(workspace, controlnet_file_sha256(path), device="cpu")
    args = call(cn.TINY, 2, 32, 24)  # 192x256 px: outside the profile
    reason = engines.why_not(*args)
    assert reason.startswith("no ControlNet engine covers 192x256 px, 2 rows") and "outside" in reason
    assert engines.run(*args) is None
    assert controlnet_engines(workspace, "0" * 64, device="cpu") is None  # a file without engines
    x, hint, *rest = call(cn.TINY, 2, 8, 8)
    half = hint[:, :, ::2, ::2]  # a hint that is not 8x the latent
    assert engines.why_not(x, half, *rest).endswith(
        "the control image (hint) is [3, 32, 32], the engine takes [3, 64, 64] at this latent size)")


def test_the_unet_router_never_takes_a_controlnet_engine(tiny, built):
    _, path, _ = tiny
    workspace, entry = built
    router, left_out = router_for_checkpoint(workspace, entry.checkpoint.sha256, "cpu")
    assert router.records == [] and left_out == []


def test_list_shows_and_remove_deletes_a_controlnet_engine(tiny, tmp_path, capsys):
    _, path, _ = tiny
    workspace = Workspace(tmp_path)
    entry = build_controlnet_engine(workspace, path, Profile.static(1, 64, 64), OnnxRuntimeBackend(), "fp32",
                                    device="cpu")
    engine_file = workspace.manifest().file_path(entry)
    record = workspace.weights_record_path(entry.checkpoint.weights)
    assert engine_file.is_file() and record.is_file()
    assert main(["list", "--dir", str(tmp_path), "--device", "cpu"]) == 0
    listed = capsys.readouterr().out
    assert f"ready      {entry.id}" in listed and "controlnet-model-sd1" in listed
    assert main(["remove", entry.id, "--dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == f"removed {entry.id} and {entry.file}"
    assert not engine_file.exists() and not record.exists() and workspace.manifest().entries() == []


def test_a_controlnet_without_attention_is_refused_in_one_line_before_any_export(tmp_path):
    small = cn.ControlNetConfig(**{**cn.TINY_XL.__dict__, "transformer_depth": (0, 0), "transformer_depth_middle": 0})
    path = save(cn.seeded_controlnet(small, seed=2), tmp_path / "small.safetensors", "")
    with pytest.raises(UserError) as caught:
        build_controlnet_engine(Workspace(tmp_path / "ws"), path, PROFILE, OnnxRuntimeBackend(), "fp32", device="cpu")
    assert "small.safetensors has no attention layers" in str(caught.value)
    assert not (tmp_path / "ws" / "Unet-onnx").exists()


def test_the_torch_backend_compiles_a_controlnet_that_serves_as_pytorch(tiny, tmp_path):
    """Inductor on this CPU: about a minute. One size; fewer rows are padded, more are split."""
    from sd_unet_trt.trt_core.backends import get_backend

    model, path, _ = tiny
    workspace = Workspace(tmp_path)
    entry = build_controlnet_engine(workspace, path, Profile.static(2, 64, 96), get_backend("torch"), "fp32",
                                    device="cpu")
    assert entry.backend == "torch" and entry.accuracy["max_rel"] < 1e-5
    engines = controlnet_engines(workspace, entry.checkpoint.sha256, device="cpu")
    try:
        for rows in (3, 6):  # 3: padded to the engine's 4 rows; 6: two runs of 3
            args = call(cn.TINY, rows, 8, 12)
            with torch.no_grad():
                assert_close(engines.run(*args), model(*args))
    finally:
        engines.close()


def test_export_triton_serves_no_controlnet_as_a_checkpoint(built, tmp_path, capsys):
    workspace, _ = built
    code = main(["export-triton", "--dir", str(workspace.root), "--out", str(tmp_path / "repo"), "--device", "cpu"])
    assert code == 2
    assert "no checkpoint has engines" in capsys.readouterr().err and not (tmp_path / "repo").exists()


RESNET_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "out_layers.0": "norm2", "out_layers.3": "conv2",
                "emb_layers.1": "time_emb_proj", "skip_connection": "conv_shortcut"}


def diffusers_name(key: str, per_level: int = 3) -> str:
    """The name diffusers' ControlNetModel gives an original-layout tensor, written from its naming
    (conv_in, down_blocks.L.resnets/attentions.I, downsamplers, mid_block, controlnet_*), independently
    of the converter under test."""
    fixed = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
             "input_blocks.0.0": "conv_in", "middle_block_out.0": "controlnet_mid_block"}
    name, param = key.rsplit(".", 1)
    if name in fixed:
        return f"{fixed[name]}.{param}"
    parts = key.split(".")
    if parts[0] == "input_hint_block":
        index = int(parts[1]) // 2
        block = "conv_in" if index == 0 else "conv_out" if index == 7 else f"blocks.{index - 1}"
        return f"controlnet_cond_embedding.{block}.{param}"
    if parts[0] == "zero_convs":
        return f"controlnet_down_blocks.{parts[1]}.{param}"
    rest = ".".join(parts[3:])
    if parts[0] == "middle_block":
        if parts[1] == "1":
            return f"mid_block.attentions.0.{'.'.join(parts[2:])}"
        layer = ".".join(parts[2:4]) if parts[2] != "skip_connection" else parts[2]
        tail = ".".join(parts[4:]) if parts[2] != "skip_connection" else ".".join(parts[3:])
        return f"mid_block.resnets.{int(parts[1]) // 2}.{RESNET_NAMES[layer]}.{tail}"
    block = int(parts[1])
    level, index = (block - 1) // per_level, (block - 1) % per_level
    if index == per_level - 1:  # the level's Downsample
        return f"down_blocks.{level}.downsamplers.0.conv.{'.'.join(parts[4:])}"
    if parts[2] == "1":
        return f"down_blocks.{level}.attentions.{index}.{rest}"
    layer = ".".join(parts[3:5]) if parts[3] != "skip_connection" else parts[3]
    tail = ".".join(parts[5:]) if parts[3] != "skip_connection" else ".".join(parts[4:])
    return f"down_blocks.{level}.resnets.{index}.{RESNET_NAMES[layer]}.{tail}"


def test_a_controlnet_in_diffusers_layout_is_read_as_the_original(tiny, tmp_path):
    model, *_ = tiny
    state = {diffusers_name(k): v for k, v in model.state_dict().items()}
    for diffusers_key in ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",  # input_blocks.4.1
                          "down_blocks.2.downsamplers.0.conv.weight", "controlnet_cond_embedding.blocks.5.weight",
                          "controlnet_down_blocks.11.weight", "mid_block.resnets.1.time_emb_proj.weight",
                          "down_blocks.1.resnets.0.conv_shortcut.weight"):
        assert diffusers_key in state, diffusers_key
    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    loaded, config = load_controlnet(path)
    assert config == cn.TINY
    args = call(config, 2, 8, 12)
    with torch.no_grad():
        assert_close(loaded(*args), model(*args))


def test_a_controlnet_build_waits_for_no_one_and_a_changed_engine_is_set_aside(tiny, tmp_path):
    """The UNet builds' one lock covers ControlNet builds too; an engine file changed after its build
    is never loaded: the call gets None and the one-line reason."""
    from filelock import FileLock

    from sd_unet_trt.trt_core.pipeline import BuildBusy

    model, path, _ = tiny
    workspace = Workspace(tmp_path)
    workspace.engine_dir.mkdir(parents=True)
    with FileLock(str(workspace.engine_dir / ".build.lock")):
        with pytest.raises(BuildBusy):
            build_controlnet_engine(workspace, path, Profile.static(1, 64, 64), OnnxRuntimeBackend(), "fp32",
                                    device="cpu")
    entry = build_controlnet_engine(workspace, path, Profile.static(1, 64, 64), OnnxRuntimeBackend(), "fp32",
                                    device="cpu")
    engine_file = workspace.manifest().file_path(entry)
    data = bytearray(engine_file.read_bytes())
    data[-1] ^= 1  # same size, other content
    engine_file.write_bytes(bytes(data))
    engines = controlnet_engines(workspace, entry.checkpoint.sha256, device="cpu")
    out, reason = engines.run_or_reason(*call(cn.TINY, 2, 8, 8))
    assert out is None and reason.startswith("no ControlNet engine covers 64x64 px, 2 rows")
    assert "set aside (UntrustedFile: " in reason and "its sha256 differs" in reason and "\n" not in reason


def test_verify_checks_a_controlnets_engines_against_pytorch(tiny, built, capsys):
    _, path, _ = tiny
    workspace, entry = built
    assert main(["verify", "--controlnet", str(path), "--dir", str(workspace.root), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"ok   {entry.id}: relative error ") and out.count("\n") == 1


def test_timesteps_are_rounded_to_the_models_dtype_before_embedding_as_cldm_does():
    """sd-webui-controlnet's cldm.ControlNet.forward casts timesteps to its dtype (fp16 on a GPU)
    first: a fractional sampler timestep is rounded there, and engines built from our model must
    compute the same (bf16 here: the CPU's half type)."""
    model = cn.seeded_controlnet(cn.TINY, 3).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=generator)
    hint = torch.rand(1, 3, 64, 64, generator=generator)
    context = torch.randn(1, 77, cn.TINY.context_dim, generator=generator)
    fractional = torch.tensor([946.3])
    assert fractional.to(torch.bfloat16).item() != fractional.item()
    with torch.no_grad():
        served = model(x, hint, fractional, context)
        rounded = model(x, hint, fractional.to(torch.bfloat16).float(), context)
    assert all(torch.equal(a, b) for a, b in zip(served, rounded))
