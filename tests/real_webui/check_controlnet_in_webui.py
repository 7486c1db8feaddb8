"""sd-webui-controlnet (v1.1.455, the real extension) with our engines in the real WebUI v1.10.1
(CPU, offline), driven through the API under --api-auth. Prints one line per check; exits 1 if any
failed.

    python tests/real_webui/check_controlnet_in_webui.py HARNESS_DIR [--restore-venv] [--port 7872]
                                                         [--controlnet-engines-only]

HARNESS_DIR is tests/real_webui/build_harness.sh's folder, with sd-webui-controlnet/ extracted
beside webui/. The venv gets what ControlNet imports at start (opencv-python-headless, and
controlnet_aux without its dependencies, whose pins clash with the WebUI's); tests/real_webui/
tiny_controlnet (a test-only extension) sizes ControlNet for the tiny checkpoint and writes two tiny
ControlNets and a tiny T2I-Adapter made by ControlNet's own model code with random weights.

Checks: ControlNet and the T2I-Adapter change the image; with only a plain engine its steps fall back with the reason
in the infotext and the image is the built-in UNet's; an engine with ControlNet inputs, built
through the API, then serves one unit, two units of different weights, a guidance start/end, both
non-balanced control modes, hires fix, a T2I-Adapter alone, with a ControlNet and with hires
fix, each within 2/255 of the built-in UNet under ControlNet,
the infotext naming the engine; reference-only falls back with its reason and the built-in UNet's
image; a generation without ControlNet afterwards runs on the plain engine (restored layers are no
patch). Issue 23: an engine of one tiny ControlNet, built through the API (ONNX Runtime fp32), serves
its units: one unit, two units (the other ControlNet has no engine and runs eager), each control mode,
batch 2 and hires fix, every image within 2/255 of eager ControlNet on the built-in UNet, the
infotext naming the ControlNet engine and saying which unit ran where. With
--controlnet-engines-only, only the UNet engine those need is built and only they run.
"""
from __future__ import annotations

import base64
import io
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_in_webui import (MAX_DIFF, arguments, built, check, installed_extension, make_data_dir,  # noqa: E402
                            pinned_install, profile, run_checks)
from webui_client import WebUI, max_diff, trt_value  # noqa: E402

HERE = Path(__file__).resolve().parent
ENGINES_ONLY = [False]  # --controlnet-engines-only: the UNet engine it needs, then the ControlNet engine checks
CONTROLNET_IMPORTS = (["opencv-python-headless"], ["--no-deps", "controlnet_aux==0.0.9"])


def install_controlnet(harness: Path, data: Path) -> None:
    """ControlNet's import-time needs into the venv, nothing the WebUI pins changed; both extensions
    into the data folder."""
    changed, _, failure = pinned_install(harness / "venv" / "bin" / "python", *CONTROLNET_IMPORTS)
    check(not changed and not failure,
          f"ControlNet's imports installed, no package of the WebUI changed (changed: {changed or 'none'}) {failure}")
    extensions = data / "extensions"
    extensions.mkdir(exist_ok=True)
    os.symlink(harness / "sd-webui-controlnet", extensions / "sd-webui-controlnet")
    os.symlink(HERE / "tiny_controlnet", extensions / "tiny-controlnet")


def hint_image(seed: int) -> str:
    pixels = (np.random.RandomState(seed).rand(64, 64, 3) * 255).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def unit(model: str, **fields) -> dict:
    return {"enabled": True, "module": "none", "model": model, "image": hint_image(1), "weight": 1.0,
            "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": "Balanced", "resize_mode": "Crop and Resize",
            "pixel_perfect": False, "processor_res": 64, **fields}


def generate(webui: WebUI, unet: str, units: list[dict], **fields):
    scripts = {"alwayson_scripts": {"ControlNet": {"args": units}}} if units else {}
    return webui.txt2img("a cat", {"sd_unet": unet}, **scripts, **fields)


def generate_batch(webui: WebUI, unet: str, units: list[dict], **fields):
    """The batch's images (without the control images ControlNet appends) and the infotext."""
    images, info, _ = webui.txt2img_all("a cat", {"sd_unet": unet}, alwayson_scripts={"ControlNet": {"args": units}},
                                        **fields)
    return images[:fields.get("batch_size", 1)], info


def compare(webui: WebUI, what: str, units: list[dict], expect: tuple[str, ...] = (), fallback: str = "",
            **fields) -> None:
    """Engines under ControlNet (sd_unet Automatic) against the built-in UNet under ControlNet
    (None): the same image within 2/255, and what the infotext says served the steps."""
    fast, info, _ = generate(webui, "Automatic", units, **fields)
    ref, _, _ = generate(webui, "None", units, **fields)
    value, diff = trt_value(info), max_diff(fast, ref)
    ok = diff <= MAX_DIFF and all(e in value for e in expect)
    ok = ok and (fallback in value if fallback else "fallback" not in value)
    check(ok, f"{what}: {diff}/255 from the built-in UNet under ControlNet; TensorRT: {value}")


def controlnet_checks(webui: WebUI) -> None:
    status, models = webui.request("GET", "/controlnet/model_list?update=true")
    names = models.get("model_list", []) if status == 200 else []
    check(len(names) == 3, f"ControlNet lists the two tiny ControlNets and the tiny T2I-Adapter ({names})")
    if len(names) != 3:
        return
    adapter = next(n for n in names if "t2iadapter" in n)
    a, b = (n for n in names if n != adapter)
    with_cn, _, _ = generate(webui, "None", [unit(a)])
    without, _, _ = generate(webui, "None", [])
    check(max_diff(with_cn, without) > 10, f"ControlNet changes the image by {max_diff(with_cn, without)}/255")
    with_adapter, _, _ = generate(webui, "None", [unit(adapter, image=hint_image(3))])
    check(max_diff(with_adapter, without) > 10,
          f"the T2I-Adapter changes the image by {max_diff(with_adapter, without)}/255")

    plain = None if ENGINES_ONLY[0] else built(webui, "onnxruntime fp32, 64-128 px, no ControlNet inputs",
                                               {"backend": "onnxruntime", "precision": "fp32", "profile": profile(64, 128)})
    if plain:
        compare(webui, "only a plain engine: ControlNet's steps fall back", [unit(a)],
                fallback="no engine of this checkpoint takes ControlNet's residuals")
    engine = built(webui, "onnxruntime fp32 with ControlNet inputs, 64-128 px",
                   {"backend": "onnxruntime", "precision": "fp32", "profile": profile(64, 128), "controlnet": True})
    if not engine:
        return
    label = "[onnxruntime fp32, ControlNet] 64-128x64-128 px"
    if ENGINES_ONLY[0]:
        controlnet_engine_checks(webui, a, b, label)
        return
    compare(webui, "one unit", [unit(a)], expect=(label,))
    compare(webui, "two units, weights 1.0 and 0.6", [unit(a), unit(b, weight=0.6, image=hint_image(2))], expect=(label,))
    compare(webui, "guidance from 25% to 75% of the steps", [unit(a, guidance_start=0.25, guidance_end=0.75)],
            expect=(label,))
    compare(webui, "control mode: my prompt is more important", [unit(a, control_mode="My prompt is more important")],
            expect=(label,))
    compare(webui, "control mode: ControlNet is more important",
            [unit(a, control_mode="ControlNet is more important")], expect=(label,))
    compare(webui, "hires fix", [unit(a, weight=0.8)], expect=(f"first pass: {label}", f"hires pass: {label}"),
            enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6, hr_second_pass_steps=2)
    compare(webui, "a T2I-Adapter", [unit(adapter, image=hint_image(3))], expect=(label,))
    compare(webui, "a ControlNet and a T2I-Adapter, weights 0.8 and 0.7",
            [unit(a, weight=0.8), unit(adapter, weight=0.7, image=hint_image(3))], expect=(label,))
    compare(webui, "a T2I-Adapter with hires fix", [unit(adapter, image=hint_image(3))],
            expect=(f"first pass: {label}", f"hires pass: {label}"),
            enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6, hr_second_pass_steps=2)
    controlnet_engine_checks(webui, a, b, label)
    compare(webui, "reference-only (it patches the UNet's attention): falls back, its own pass on the built-in UNet",
            [unit("None", module="reference_only")], fallback="an extension replaced the forward of UNet layer")
    _, info, _ = generate(webui, "Automatic", [])
    value = trt_value(info)
    check(value == "[onnxruntime fp32] 64-128x64-128 px, batch 1-2, 75-150 tokens",
          f"without ControlNet afterwards, the plain engine: {value}")


def compare_engines(webui: WebUI, what: str, units: list[dict], expect: tuple[str, ...], **fields) -> None:
    """ControlNet engines and the UNet engine (sd_unet Automatic) against eager ControlNet and the
    built-in UNet (None): every image of the batch within 2/255, and what the infotext says ran where."""
    fast, info = generate_batch(webui, "Automatic", units, **fields)
    ref, _ = generate_batch(webui, "None", units, **fields)
    value, diff = trt_value(info), max(max_diff(f, r) for f, r in zip(fast, ref))
    ok = len(fast) == len(ref) == fields.get("batch_size", 1) and diff <= MAX_DIFF and "fallback" not in value
    ok = ok and all(e in value for e in expect)
    check(ok, f"ControlNet engine, {what}: {diff}/255 from eager ControlNet and the built-in UNet "
              f"({len(fast)} images); TensorRT: {value}")


def controlnet_engine_checks(webui: WebUI, a: str, b: str, unet_label: str) -> None:
    """Issue 23: an engine of ControlNet `a` (built through the API) serves its units; `b` has none
    and runs eager, the infotext saying which ran where."""
    status, answer = webui.request("POST", "/trt-unet/v1/controlnet-builds", {"controlnet": "no such model"})
    check(status == 400 and "no ControlNet model no such model" in str(answer),
          f"a ControlNet build of a model ControlNet does not list: {status} {answer}")
    started = time.time()
    try:
        job = webui.build({"controlnet": a, "backend": "onnxruntime", "precision": "fp32", "profile": profile(64, 128)},
                          route="/trt-unet/v1/controlnet-builds")
    except (RuntimeError, TimeoutError) as e:
        check(False, f"build an engine of ControlNet {a}: {e}")
        return
    if not check(job["state"] == "done", f"build an engine of ControlNet {a} (onnxruntime fp32, 64-128 px): "
                                         f"{job['state']} in {time.time() - started:.0f} s {job['error']}"):
        return
    served = f"ControlNet {a}: [onnxruntime fp32"
    eager = f"ControlNet {b}: eager (no ControlNet engine of {b.split(' [')[0]}.safetensors"
    compare_engines(webui, "one unit", [unit(a)], (unet_label, served))
    compare_engines(webui, "two units, one without an engine", [unit(a), unit(b, weight=0.6, image=hint_image(2))],
                    (unet_label, served, eager))
    for mode in ("My prompt is more important", "ControlNet is more important"):
        compare_engines(webui, f"control mode: {mode}", [unit(a, control_mode=mode)], (unet_label, served))
    compare_engines(webui, "batch 2", [unit(a)], (unet_label, served), batch_size=2)
    compare_engines(webui, "hires fix", [unit(a, weight=0.8)], (f"first pass: {unet_label}", f"hires pass: {unet_label}",
                                                                 served),
                    enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6, hr_second_pass_steps=2)


def main(argv: list[str]) -> int:
    ENGINES_ONLY[0] = "--controlnet-engines-only" in argv
    args = arguments([a for a in argv if a != "--controlnet-engines-only"], __doc__, 7872)
    harness = args.harness
    if not (harness / "sd-webui-controlnet").is_dir():
        print(f"{harness} has no sd-webui-controlnet/ (tests/real_webui/build_harness.sh extracts it)")
        return 1
    extension = installed_extension(harness, args.restore_venv)
    data = make_data_dir(harness)
    install_controlnet(harness, data)
    return run_checks(harness, extension, data, args.port, "sd-webui-controlnet and the extension", controlnet_checks)

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
