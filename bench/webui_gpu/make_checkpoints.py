"""Checkpoints of the real architectures with random weights, made by the WebUI's own ldm/sgm code
from the WebUI's own configs, saved as fp16 safetensors the WebUI loads like any checkpoint; a
kohya-format LoRA for each.

    python make_checkpoints.py WEBUI_DIR OUT_DIR [--models sd15,sdxl] [--tiny] [--device cuda] [--seed 0]

- sd15: configs/v1-inference.yaml (the WebUI's SD1.5 config) -> OUT_DIR/bench_sd15.safetensors
- sdxl: repositories/generative-models/configs/inference/sd_xl_base.yaml (the config the WebUI uses
  for SDXL) -> OUT_DIR/bench_sdxl.safetensors
- LoRAs: OUT_DIR/Lora/bench_sd15_lora.safetensors, bench_sdxl_lora.safetensors (every attention,
  feed-forward and projection layer of the UNet, rank 4; tests/real_webui/tiny_lora.py).
--tiny: the CPU rehearsal's sizes: the UNets of models/unet.py's TINY and TINY_XL (the extension
knows these families) and, for SDXL, an OpenCLIP text tower of bigG's width with 2 layers
(`tiny-bigG`, registered with open_clip here and by the bench helper extension in the WebUI). The
yaml goes beside the checkpoint, where the WebUI looks for a checkpoint's own config.

Weights: the modules' own initialisation on the device (fast on a GPU), then every all-zero weight
tensor (ldm zero-initialises each ResBlock's last conv, proj_out and the UNet's final conv) drawn
again, so that the UNet's output depends on its inputs, and every norm's affine parameters
perturbed (all-default norms make the WebUI's emphasis divide 0 by 0 with CLIP skip 2), as
../shared/webui-testing/make_tiny_ckpt.py does. Seeded: the same seed gives the same file on the
same device type.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "tests" / "real_webui"))
from tiny_lora import lora_tensors  # noqa: E402

UNET_PREFIX = {"sd15": "model.diffusion_model.", "sdxl": "model.diffusion_model."}
TINY_BIG_G = "tiny-bigG"
# bigG's text tower (width 1280, 20 heads, pooled 1280) with 2 layers: SDXL's context stays 768 + 1280
TINY_BIG_G_CONFIG = {"embed_dim": 1280,
                     "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 64, "patch_size": 14},
                     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1280, "heads": 20, "layers": 2}}
LORA_SCALE = {"sd15": 0.3, "sdxl": 0.3}  # large enough to change the image, small enough for fp16


def register_tiny_open_clip() -> None:
    import open_clip.factory
    open_clip.factory._MODEL_CONFIGS[TINY_BIG_G] = copy.deepcopy(TINY_BIG_G_CONFIG)


def offline_text_encoders(device: torch.device) -> None:
    """The configs name pretrained text encoders: build them from their configs instead (the HF
    cache holds the CLIP ViT-L/14 config and tokenizer; open_clip builds bigG from its own config),
    on the device, with their own initialisation."""
    import open_clip
    import transformers

    transformers.CLIPTextModel.from_pretrained = classmethod(
        lambda cls, name, *a, **k: transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(name)))
    create = open_clip.create_model_and_transforms

    def without_download(*args, pretrained=None, device=None, **kwargs):
        return create(*args, pretrained=None, device=None, **kwargs)
    open_clip.create_model_and_transforms = without_download


def config_for(webui: Path, model: str, tiny: bool):
    from omegaconf import OmegaConf

    if model == "sd15":
        config = OmegaConf.load(webui / "configs" / "v1-inference.yaml")
        if tiny:  # models/unet.py TINY: SD1.5's blocks, 32 base channels
            config.model.params.unet_config.params.model_channels = 32
        config.model.params.unet_config.params.use_checkpoint = False
        return config
    config = OmegaConf.load(webui / "repositories" / "generative-models" / "configs" / "inference" / "sd_xl_base.yaml")
    net = config.model.params.network_config.params
    net.use_checkpoint = False
    if tiny:  # models/unet.py TINY_XL: SDXL's block types, two levels, attention at the second only
        net.model_channels, net.channel_mult, net.transformer_depth = 32, [1, 2], [1, 1]
        net.attention_resolutions = [2]
        config.model.params.conditioner_config.params.emb_models[1].params.arch = TINY_BIG_G
    return config


def instantiate(webui: Path, model: str, config, device: torch.device) -> torch.nn.Module:
    import pytorch_lightning
    # ldm imports pytorch_lightning.utilities.distributed, gone in Lightning 2: the WebUI's own fix
    # (modules/initialize_util.fix_pytorch_lightning)
    sys.modules.setdefault("pytorch_lightning.utilities.distributed", pytorch_lightning.utilities.rank_zero)
    repo = "stable-diffusion-stability-ai" if model == "sd15" else "generative-models"
    sys.path.insert(0, str(webui / "repositories" / repo))
    if model == "sd15":
        from ldm.util import instantiate_from_config
    else:
        from sgm.util import instantiate_from_config
    # Built on the CPU, then moved: ldm's make_beta_schedule calls .numpy() on a tensor that a
    # torch.device(cuda) context would place on the GPU (found on the H100, 2026-12-07).
    return instantiate_from_config(config.model).eval().to(device)


def randomize_zeros_and_norms(model: torch.nn.Module, seed: int, device: torch.device) -> None:
    g = torch.Generator(device).manual_seed(seed + 1)
    with torch.no_grad():
        for _, p in model.model.diffusion_model.named_parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.02, generator=g)
        for mod in model.modules():
            if isinstance(mod, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and mod.weight is not None:
                mod.weight.add_(torch.randn(mod.weight.shape, generator=g, device=device) * 0.05)
                mod.bias.add_(torch.randn(mod.bias.shape, generator=g, device=device) * 0.05)


def save_checkpoint(model: torch.nn.Module, path: Path) -> dict[str, tuple[int, ...]]:
    """fp16 floats (integer buffers such as CLIP's position_ids as int64); the UNet's shapes."""
    from safetensors.torch import save_file

    state = {}
    for key, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            state[key] = value.detach().to(torch.float16).contiguous().cpu()
        elif "position_ids" in key:
            state[key] = value.detach().to(torch.int64).contiguous().cpu()
    save_file(state, str(path), metadata={"format": "pt", "note": "random weights, sd-unet-trt bench"})
    prefix = "model.diffusion_model."
    return {k[len(prefix):]: tuple(v.shape) for k, v in state.items() if k.startswith(prefix)}


def make(webui: Path, out: Path, model: str, tiny: bool, device: torch.device, seed: int) -> None:
    from omegaconf import OmegaConf

    started = time.time()
    torch.manual_seed(seed)
    config = config_for(webui, model, tiny)
    sd_model = instantiate(webui, model, config, device)
    randomize_zeros_and_norms(sd_model, seed, device)
    name = f"bench_{model}"
    path = out / f"{name}.safetensors"
    shapes = save_checkpoint(sd_model, path)
    if tiny:  # the WebUI reads a checkpoint's own yaml from beside it
        OmegaConf.save(config, out / f"{name}.yaml")
    unet = sum(v.numel() for v in sd_model.model.diffusion_model.parameters())
    del sd_model
    (out / "Lora").mkdir(exist_ok=True)
    lora = lora_tensors(shapes, seed=seed, scale=LORA_SCALE[model])
    from safetensors.torch import save_file
    save_file(lora, str(out / "Lora" / f"{name}_lora.safetensors"))
    print(f"[make_checkpoints] {path.name}: UNet {unet / 1e6:.0f}M parameters, {path.stat().st_size / 2**30:.2f} GiB, "
          f"LoRA {len(lora) // 3} layers, {time.time() - started:.0f} s", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("webui", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    device = torch.device(args.device)
    offline_text_encoders(device)
    if args.tiny:
        register_tiny_open_clip()
    for model in args.models.split(","):
        if (args.out / f"bench_{model}.safetensors").exists():
            print(f"[make_checkpoints] bench_{model}.safetensors is there already", flush=True)
            continue
        make(args.webui.resolve(), args.out, model, args.tiny, device, args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
