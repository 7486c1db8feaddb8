"""Ties models/controlnet.py to the real thing: ControlNets built by sd-webui-controlnet's own model
code (scripts/cldm.py, on the WebUI's ldm) with seeded random weights, none zero, saved as its files
are (`control_model.` prefix), read back by our `load_controlnet` (architecture inferred from the
weights), and every residual compared at even and odd latent sizes. Needs a WebUI v1.10.1 checkout
with its repositories/, sd-webui-controlnet and the WebUI's venv; CI has none of them.

usage: WEBUI_VENV_PYTHON tests/real_webui/compare_controlnet_with_cldm.py WEBUI_DIR CONTROLNET_EXTENSION_DIR [--sd15]

--sd15 adds a ControlNet of SD1.5's full size (361M parameters; a minute on a small CPU).
"""
import importlib.util
import math
import sys
import tempfile
import types
from pathlib import Path

import torch
from safetensors.torch import save_file

webui, extension = Path(sys.argv[1]), Path(sys.argv[2])
repo = Path(__file__).resolve().parents[2]
# sd-webui-controlnet's `scripts` package first: generative-models has one of that name too; cldm then
# falls back from sgm to the WebUI's ldm blocks, as it does in the WebUI without sgm on the path
sys.path[:0] = [str(extension), str(webui), str(webui / "repositories" / "stable-diffusion-stability-ai")]
# cldm imports modules.devices only for its low-VRAM hooks, which building and running never call
devices = types.ModuleType("modules.devices")
sys.modules.setdefault("modules", types.ModuleType("modules")).devices = devices
sys.modules["modules.devices"] = devices
_spec = importlib.util.spec_from_file_location("sd_unet_trt", repo / "__init__.py", submodule_search_locations=[str(repo)])
sys.modules["sd_unet_trt"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sys.modules["sd_unet_trt"])

from scripts import cldm  # noqa: E402

from sd_unet_trt.trt_core.controlnet import load_controlnet  # noqa: E402

SD1 = dict(in_channels=4, num_heads=8, channel_mult=[1, 2, 4, 4], attention_resolutions=[1, 2, 4],
           transformer_depth=[1, 1, 1, 0], transformer_depth_middle=1, num_res_blocks=2, context_dim=768,
           use_linear_in_transformer=False, hint_channels=3, use_fp16=False)
XL = dict(num_classes="sequential", adm_in_channels=2816, in_channels=4, num_res_blocks=2, context_dim=2048,
          use_linear_in_transformer=True, num_head_channels=64, hint_channels=3, use_fp16=False)
CASES = {  # the sizes tests/real_webui/tiny_controlnet gives cldm, an SDXL-type one, and SD1.5's own
    "tiny SD1.x": dict(SD1, model_channels=32),
    "tiny SDXL": dict(XL, model_channels=32, channel_mult=[1, 2], attention_resolutions=[2], transformer_depth=[0, 1]),
    "tiny SDXL mid": dict(XL, model_channels=32, channel_mult=[1, 2, 2], attention_resolutions=[4],
                          transformer_depth=[0, 0, 1]),
}
if "--sd15" in sys.argv:
    CASES["SD1.5"] = dict(SD1, model_channels=320)


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=generator) / math.sqrt(p[0].numel()))
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * 0.05 + (1.0 if "norm" in name else 0.0))
    return model.eval()


worst = 0.0
with tempfile.TemporaryDirectory() as folder:
    for seed, (name, config) in enumerate(CASES.items(), start=1):
        theirs = randomized(cldm.ControlNet(**config), seed)
        path = Path(folder) / f"{seed}.safetensors"
        save_file({f"control_model.{k}": v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
        ours, _ = load_controlnet(path)
        for latent in ((8, 8), (8, 13), (11, 7)):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(2, 4, *latent, generator=g)
            hint = torch.rand(2, 3, latent[0] * 8, latent[1] * 8, generator=g)
            t = torch.tensor([999.0, 10.5])
            context = torch.randn(2, 77, config["context_dim"], generator=g)
            y = torch.randn(2, 2816, generator=g) if "adm_in_channels" in config else None
            with torch.no_grad():
                expected, got = theirs(x, hint, t, context, y), ours(x, hint, t, context, y)
            assert len(got) == len(expected), (len(got), len(expected))
            diff = max(float((a - b).abs().max()) for a, b in zip(got, expected))
            scale = max(float(b.abs().max()) for b in expected)
            worst = max(worst, diff / scale)
            print(f"{name:14} latent {latent[0]}x{latent[1]}: {len(got)} residuals, max |ours - cldm| {diff:.2e} "
                  f"(largest residual {scale:.1f})")
print(f"worst relative to the largest residual: {worst:.1e}")
sys.exit(0 if worst < 1e-5 else 1)
