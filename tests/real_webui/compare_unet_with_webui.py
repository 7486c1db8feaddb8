"""Ties models/unet.py to the real thing: loads the same weights into the WebUI's own ldm (SD1.x)
and sgm (SDXL) UNetModel, with the WebUI's `th.cat` patch for odd sizes, and into ours, and
compares outputs at even and odd latent sizes. Needs a WebUI v1.10.1 checkout with its
repositories/ and a Python that can import them (the WebUI's venv); CI has neither.

usage: WEBUI_VENV_PYTHON tests/real_webui/compare_unet_with_webui.py WEBUI_DIR [CHECKPOINT.safetensors CONFIG.yaml]

The checkpoint may be SD1/SD2 (its config has model.params.unet_config) or SDXL (network_config).
"""
import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

webui = Path(sys.argv[1])
repo = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(webui / "repositories" / "stable-diffusion-stability-ai"),
                str(webui / "repositories" / "generative-models")]
# the extension's one import name, loaded from this checkout by path (as the WebUI loads it)
_spec = importlib.util.spec_from_file_location("sd_unet_trt", repo / "__init__.py", submodule_search_locations=[str(repo)])
sys.modules["sd_unet_trt"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sys.modules["sd_unet_trt"])

from ldm.modules.diffusionmodules import openaimodel as ldm_openaimodel  # noqa: E402
from sgm.modules.diffusionmodules import openaimodel as sgm_openaimodel  # noqa: E402

from sd_unet_trt.models.families import detect_family  # noqa: E402
from sd_unet_trt.models.unet import UNetModel, randomize_  # noqa: E402


class CatLikeTheWebUI:
    """modules/sd_hijack_unet.py's TorchHijackForUnet: torch, with a cat that resizes the first
    tensor to the second's size (what makes multiples of 8 px work)."""

    def __getattr__(self, item):
        return self.cat if item == "cat" else getattr(torch, item)

    def cat(self, tensors, *args, **kwargs):
        if len(tensors) == 2 and tensors[0].shape[-2:] != tensors[1].shape[-2:]:
            tensors = (F.interpolate(tensors[0], tensors[1].shape[-2:], mode="nearest"), tensors[1])
        return torch.cat(tensors, *args, **kwargs)


ldm_openaimodel.th = sgm_openaimodel.th = CatLikeTheWebUI()


def compare(name, theirs, state, extra_dim=None):
    family = detect_family(state)
    ours = UNetModel(family.unet_config()).eval()
    ours.load_state_dict(state)
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for h, w in [(8, 8), (9, 8), (11, 13), (16, 12)]:
        x = torch.randn(2, family.in_channels, h, w, generator=g)
        t, c = torch.tensor([3.0, 751.5]), torch.randn(2, 154, family.context_dim, generator=g)
        y = torch.randn(2, extra_dim, generator=g) if extra_dim else None
        with torch.no_grad():
            a = theirs(x, t, c, y=y) if y is not None else theirs(x, t, c)
            b = ours(x, t, c, y)
        rel = float((a - b).norm() / a.norm())
        worst = max(worst, rel)
        print(f"{name} ({family.name}) latent {h}x{w}: relative difference {rel:.2e}")
    return worst


worst = 0.0
if len(sys.argv) > 3:
    from omegaconf import OmegaConf
    from safetensors.torch import load_file
    # SD1/SD2 configs (ldm) call the UNet `unet_config`, SDXL configs (sgm) `network_config`
    params = OmegaConf.load(sys.argv[3]).model.params
    unet = params.get("unet_config") or params.get("network_config")
    if unet is None:
        sys.exit(f"{sys.argv[3]} has neither model.params.unet_config nor model.params.network_config")
    module = sgm_openaimodel if str(unet.target).startswith("sgm.") else ldm_openaimodel
    checkpoint = load_file(sys.argv[2])
    state = {k[len("model.diffusion_model."):]: v for k, v in checkpoint.items() if k.startswith("model.diffusion_model.")}
    theirs = module.UNetModel(**unet.params).eval()
    theirs.load_state_dict(state)
    worst = max(worst, compare(f"{module.__name__.split('.')[0]}, checkpoint", theirs, state,
                               unet.params.get("adm_in_channels")))

sdxl_shaped = sgm_openaimodel.UNetModel(
    adm_in_channels=2816, num_classes="sequential", in_channels=4, out_channels=4, model_channels=32,
    attention_resolutions=[2], num_res_blocks=2, channel_mult=[1, 2], num_head_channels=64,
    use_linear_in_transformer=True, transformer_depth=[0, 1], context_dim=2048,
    use_spatial_transformer=True, spatial_transformer_attn_type="softmax", legacy=False)
worst = max(worst, compare("sgm, SDXL blocks", randomize_(sdxl_shaped, 1), sdxl_shaped.state_dict(), 2816))
print(f"worst relative difference {worst:.2e}")
sys.exit(0 if worst < 1e-5 else 1)
