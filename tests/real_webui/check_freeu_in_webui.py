"""sd-webui-freeu (ljleb/sd-webui-freeu, the real extension) and the WebUI's Hypertile with our
engines in the real WebUI v1.10.1 (CPU, offline), driven through the API under --api-auth. Prints
one line per check; exits 1 if any failed.

    python tests/real_webui/check_freeu_in_webui.py HARNESS_DIR FREEU_DIR [--restore-venv] [--port 7873]
        [--no-sd1-size]

FREEU_DIR is a copy of sd-webui-freeu's files (e.g. `git -C <mirror> archive HEAD | tar -x -C DIR`);
it is copied into the data folder's extensions/. FreeU patches `th.cat`, a name the UNet's forward
resolves, not a layer (issue 19).

Checks, on the tiny checkpoint and on an SD1-size one (320 base channels, random weights, made
here with the WebUI's own ldm; FreeU acts only on 1280/640/320-channel stages, so the tiny UNet
shows it nothing), with and without a LoRA: FreeU installed but off, the engines serve within 2/255
of the built-in UNet (the WebUI's own patches and FreeU's inert th.cat are no fallback); FreeU on,
the engines' image is within 2/255 of the built-in UNet's under FreeU, falling back with the reason
in the infotext, and on the SD1-size UNet FreeU changes the image (so this check can fail). Then
Hypertile: off serves, on falls back with its reason, off again serves (its wrappers stay on the
layers).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_in_webui import (MAX_DIFF, arguments, built, check, installed_extension, make_data_dir,  # noqa: E402
                            profile, run_checks)
from tiny_lora import lora_tensors  # noqa: E402
from webui_client import WebUI, max_diff, trt_value  # noqa: E402

UNET_PREFIX = "model.diffusion_model."
FREEU_OFF = {"enable": False}
# FreeU's SD1.4 numbers (its README): backbone and skip factors of the 1280- and 640-channel stages
FREEU_ON = {"enable": True, "version": "1", "start_ratio": 0.0, "stop_ratio": 1.0, "transition_smoothness": 0.0,
            "stage_infos": [{"backbone_factor": 1.2, "skip_factor": 0.9}, {"backbone_factor": 1.4, "skip_factor": 0.2},
                            {}]}
FREEU_REASON = "FreeU (sd-webui-freeu) replaces th.cat in the UNet's forward"
HYPERTILE_REASON = "Hypertile is on (UNet layer"
SD1_SIZE = "sd1size"
# The SD1-size checkpoint: tiny.yaml with the UNet's 320 base channels (an SD 1.x UNet, 860M
# parameters), its tiny VAE and 2-layer text encoder kept; random weights, as make_tiny_ckpt.py makes
# them (ldm's zero-initialised layers re-randomised, so the UNet's output depends on its inputs).
MAKE_SD1_SIZE = """
import sys
import torch, transformers
from omegaconf import OmegaConf
from safetensors.torch import save_file
import ldm.modules.encoders.modules as enc
from ldm.util import instantiate_from_config

enc.CLIPTextModel.from_pretrained = classmethod(
    lambda cls, name, *a, **k: transformers.CLIPTextModel(transformers.CLIPTextConfig.from_pretrained(name)))
torch.manual_seed(0)
config = OmegaConf.load(sys.argv[1])
config.model.params.unet_config.params.model_channels = 320
model = instantiate_from_config(config.model).eval()
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for p in model.model.diffusion_model.parameters():
        if p.dim() > 1 and p.abs().sum() == 0:
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    for m in model.modules():
        if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)) and m.weight is not None:
            m.weight.add_(torch.randn(m.weight.shape, generator=g) * 0.05)
            m.bias.add_(torch.randn(m.bias.shape, generator=g) * 0.05)
sd = {k: v.detach().contiguous() for k, v in model.state_dict().items() if v.dtype.is_floating_point or "position_ids" in k}
sd = {k: (v.float() if v.dtype.is_floating_point else v.to(torch.int64)) for k, v in sd.items()}
save_file(sd, sys.argv[2])
OmegaConf.save(config, sys.argv[3])
"""


def make_sd1_size_checkpoint(harness: Path, data: Path) -> None:
    models = data / "models" / "Stable-diffusion"
    env = dict(os.environ, HF_HOME=str(harness / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(harness / "webui" / "repositories" / "stable-diffusion-stability-ai"))
    done = subprocess.run([str(harness / "venv" / "bin" / "python"), "-c", MAKE_SD1_SIZE,
                           str(harness / "checkpoints" / "tiny.yaml"), str(models / f"{SD1_SIZE}.safetensors"),
                           str(models / f"{SD1_SIZE}.yaml")], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"making the SD1-size checkpoint failed: {done.stderr[-600:]}")
    with safe_open(str(models / f"{SD1_SIZE}.safetensors"), "pt") as f:
        shapes = {k[len(UNET_PREFIX):]: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(UNET_PREFIX)}
    save_file(lora_tensors(shapes, seed=3, scale=0.3), str(data / "models" / "Lora" / "sd1lora.safetensors"))


def prepare(harness: Path, freeu: Path, sd1_size: bool) -> Path:
    data = make_data_dir(harness)
    shutil.copytree(freeu, data / "extensions" / "sd-webui-freeu")
    config = json.loads((data / "config.json").read_text())
    config["hypertile_enable_unet"] = False  # overridden per request (else overrides leak)
    (data / "config.json").write_text(json.dumps(config))
    if sd1_size:
        make_sd1_size_checkpoint(harness, data)
    return data


def freeu_args(state: dict) -> dict:
    return {"alwayson_scripts": {"FreeU": {"args": [state]}}}


def freeu_checks(webui: WebUI, model: str, lora: str, engine_label: str, freeu_must_act: bool) -> None:
    for prompt in ("a cat", f"<lora:{lora}:1> a cat"):
        what = f"{model}, {'with a LoRA' if '<lora' in prompt else 'no LoRA'}"
        fast, info, _ = webui.txt2img(prompt, {"sd_unet": "Automatic"}, **freeu_args(FREEU_OFF))
        ref, _, _ = webui.txt2img(prompt, {"sd_unet": "None"}, **freeu_args(FREEU_OFF))
        value, diff = trt_value(info), max_diff(fast, ref)
        check(diff <= MAX_DIFF and engine_label in value and "fallback" not in value,
              f"{what}, FreeU installed but off: engines serve, {diff}/255 from the built-in UNet; TensorRT: {value}")
        fast_on, info_on, _ = webui.txt2img(prompt, {"sd_unet": "Automatic"}, **freeu_args(FREEU_ON))
        ref_on, info_ref, _ = webui.txt2img(prompt, {"sd_unet": "None"}, **freeu_args(FREEU_ON))
        value, diff, effect = trt_value(info_on), max_diff(fast_on, ref_on), max_diff(ref_on, ref)
        ok = diff <= MAX_DIFF and (FREEU_REASON in value or "fallback" not in value) and "FreeU Stages" in info_ref
        ok = ok and (effect > MAX_DIFF or not freeu_must_act)
        check(ok, f"{what}, FreeU on: engines {diff}/255 from the built-in UNet under FreeU (FreeU changes the "
                  f"built-in image by {effect}/255); TensorRT: {value}")


def hypertile_checks(webui: WebUI, engine_label: str) -> None:
    for step, enable in (("off", False), ("on", True), ("off again", False)):
        settings = {"hypertile_enable_unet": enable}
        fast, info, _ = webui.txt2img("a cat", {"sd_unet": "Automatic", **settings})
        ref, _, _ = webui.txt2img("a cat", {"sd_unet": "None", **settings})
        value, diff = trt_value(info), max_diff(fast, ref)
        served = engine_label in value and "fallback" not in value
        check(diff <= MAX_DIFF and (value.startswith(f"fallback: {HYPERTILE_REASON}") if enable else served),
              f"Hypertile {step}: {diff}/255 from the built-in UNet; TensorRT: {value}")


def checks(sd1_size: bool):
    def run(webui: WebUI) -> None:
        label = "[onnxruntime fp32] 64x64 px"
        body = {"backend": "onnxruntime", "precision": "fp32", "profile": profile(64, 64, tokens=75)}
        if not built(webui, "onnxruntime fp32, 64 px, for the tiny checkpoint", body):
            return
        freeu_checks(webui, "tiny (32 base channels)", "tinylora", label, freeu_must_act=False)
        hypertile_checks(webui, label)
        if not sd1_size:
            return
        status, _ = webui.request("POST", "/sdapi/v1/options", {"sd_model_checkpoint": f"{SD1_SIZE}.safetensors"})
        check(status == 200, f"the SD1-size checkpoint loaded ({status})")
        # fp16: ONNX Runtime takes models under 2 GB, and the SD1-size UNet is 3.4 GB in fp32
        if built(webui, "onnxruntime fp16, 64 px, for the SD1-size checkpoint (320 base channels)",
                 {**body, "precision": "fp16"}):
            freeu_checks(webui, "SD1-size (320 base channels)", "sd1lora", "[onnxruntime fp16] 64x64 px",
                         freeu_must_act=True)
    return run


def main(argv: list[str]) -> int:
    sd1_size = "--no-sd1-size" not in argv
    argv = [a for a in argv if a != "--no-sd1-size"]
    if len(argv) < 2 or not (Path(argv[1]) / "lib_free_u" / "unet.py").is_file():
        print("usage: check_freeu_in_webui.py HARNESS_DIR FREEU_DIR (a copy of sd-webui-freeu's files)")
        return 2
    freeu = Path(argv.pop(1)).resolve()
    args = arguments(argv, __doc__, 7873)
    extension = installed_extension(args.harness, args.restore_venv)
    data = prepare(args.harness, freeu, sd1_size)
    return run_checks(args.harness, extension, data, args.port, "sd-webui-freeu and the extension", checks(sd1_size))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
