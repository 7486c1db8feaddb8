"""The extension in the real AUTOMATIC1111 WebUI v1.10.1 (CPU, offline), end to end, the way a user
meets it: installed by its own install.py into the WebUI's venv, then driven through the WebUI's API
under --api-auth. Prints one line per check and exits 1 if any failed.

    python tests/real_webui/check_in_webui.py HARNESS_DIR [--restore-venv] [--port 7871]

HARNESS_DIR is the folder ../shared/webui-testing/README.md describes (webui/, venv/,
checkpoints/tiny.safetensors, hf_home/, run_webui.sh; venv.pristine/ for --restore-venv, which
first puts the venv back to the WebUI's own packages). The extension is a fresh git clone of this
checkout's HEAD, as "Install from URL" makes one.

Checks: the install changes no installed package and a second run changes nothing; the WebUI
starts; every route of ours and /sdapi answer 401 without credentials; interrogate no longer fails
on a hidden `models.blip`; with engines active (ONNX Runtime, then the torch backend), images with
and without LoRA (weights 1 and 0.5, two LoRAs, switched on and off, the functional mode, hires
fix) match the built-in UNet's within 2/255; an export made right after a LoRA generation holds the
checkpoint's own weights; a refiner's own engines serve its steps and the infotext says which
served each pass; a build started after a refiner generation is for the selected checkpoint;
with TensorRT for RTX added to the venv, the TensorRT library setting exists, bf16 is refused, a
real engine is built in the WebUI's process without a GPU and listed as unable to run here, and
generations go on; an INT8 torch engine is built in the WebUI's process and serves generations, a
LoRA included.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_lora import lora_tensors  # noqa: E402
from webui_client import WebUI, max_diff, trt_value  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
AUTH = ("user", "pass")
MAX_DIFF = 2  # /255
RESULTS: list[tuple[bool, str]] = []


def check(ok: bool, what: str) -> bool:
    RESULTS.append((ok, what))
    print(f"{'ok  ' if ok else 'FAIL'} {what}", flush=True)
    return ok


def freeze(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                         check=True).stdout
    return {p["name"].lower(): p["version"] for p in json.loads(out)}


def run_installer(python: Path, webui: Path, extension: Path) -> str:
    """install.py as the WebUI's launcher runs it (its folder on PYTHONPATH, its own Python)."""
    env = dict(os.environ, PYTHONPATH=str(webui))
    done = subprocess.run([str(python), str(extension / "install.py")], cwd=webui, env=env, capture_output=True,
                          text=True, timeout=3600)
    return done.stdout + done.stderr


def install(harness: Path, extension: Path) -> None:
    python = harness / "venv" / "bin" / "python"
    before = freeze(python)
    first = run_installer(python, harness / "webui", extension)
    after = freeze(python)
    changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    added = sorted(f"{n}=={v}" for n, v in after.items() if n not in before)
    check(not changed, f"install.py changed no installed package (changed: {changed or 'none'}; added: {', '.join(added)})")
    check(all(after.get(n) == v for n, v in [("numpy", "1.26.2"), ("protobuf", "3.20.0")]),
          "numpy 1.26.2 and protobuf 3.20.0 as the WebUI pins them")
    second = run_installer(python, harness / "webui", extension)
    check(freeze(python) == after and "installing" not in second,
          f"a second install.py run changed nothing ({second.strip().splitlines()[-1] if second.strip() else 'silent'})")
    print("install.py said:\n  " + "\n  ".join(first.strip().splitlines()), flush=True)


def install_tensorrt_rtx(harness: Path, extension: Path) -> bool:
    """TensorRT for RTX into the WebUI's venv as install.py installs it on a GeForce card (its own
    plan and pip call: nothing installed changes). install.py skips it here by itself: the WebUI's
    torch has no CUDA. Its builder runs without a GPU, so the tab's builds run for real."""
    python = harness / "venv" / "bin" / "python"
    before = freeze(python)
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import install; "
            "p = install.plan(install.tensorrt_requirements('tensorrt_rtx', '13.0'), install.installed_versions(), "
            "[], ignore_installed=False); "
            "print(json.dumps([p.packages, p.problem, [] if p.problem else install.pip_install(p.packages)]))")
    done = subprocess.run([str(python), "-c", code, str(extension)], capture_output=True, text=True, timeout=3600)
    after = freeze(python)
    changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    added = sorted(f"{n}=={v}" for n, v in after.items() if n not in before)
    return check(not changed and any(n.replace("_", "-").startswith("tensorrt-rtx-cu13-bindings") for n in added),
                 f"TensorRT for RTX installed by install.py's plan, nothing changed (added: {', '.join(added)}; "
                 f"{done.stdout.strip()[-300:] or done.stderr.strip()[-300:]})")


def tensorrt_checks(webui: WebUI) -> None:
    """TensorRT for RTX inside the WebUI, no GPU: the setting, a refused precision, a real build in
    the WebUI's process, its status, and generations going on around it."""
    _, options = webui.request("GET", "/sdapi/v1/options")
    check(options.get("trt_unet_tensorrt_library") == "Automatic",
          f"the TensorRT library setting is registered ({options.get('trt_unet_tensorrt_library')})")
    status, answer = webui.request("POST", "/trt-unet/v1/builds", {"backend": "tensorrt", "precision": "bf16",
                                                                   "profile": profile(64, 128)})
    check(status == 400 and "precision from the export" in str(answer), f"bf16 for TensorRT is refused at once "
                                                                        f"({status}: {str(answer)[:120]})")
    status, answer = webui.request("POST", "/trt-unet/v1/builds", {"backend": "tensorrt", "precision": "int8",
                                                                   "profile": profile(64, 128)})
    check(status == 400 and "Model Optimizer, which is not installed" in str(answer),
          f"int8 for TensorRT without Model Optimizer is refused at once ({status}: {str(answer)[:160]})")
    engine = built(webui, "TensorRT for RTX fp16, 64-128 px, in the WebUI's process without a GPU",
                   {"backend": "tensorrt", "precision": "fp16", "profile": profile(64, 128)})
    if engine:
        check(engine["gpu_arch"] == "portable" and engine["details"]["refittable"] is False
              and engine["backend_version"].startswith("tensorrt_rtx 1."),
              f"a portable engine ({', '.join(engine['details']['targets'])}), not refittable, "
              f"{engine['file_size'] / 2**20:.1f} MiB")
        _, engines = webui.request("GET", "/trt-unet/v1/engines")
        ours = [e for e in engines if e["backend"] == "tensorrt"]
        check(len(ours) == 1 and ours[0]["status"] == "cannot-run" and "has none" in ours[0]["status_reason"],
              f"listed as cannot-run: {ours[0]['status_reason'] if ours else 'missing'}")
    compare(webui, "96 px beside the TensorRT engine, which covers it but cannot run (ONNX Runtime serves it)",
            "a cat", expect=("[onnxruntime fp32] 64-128x64-128 px",), width=96, height=96)


def quantized_checks(webui: WebUI) -> None:
    """An INT8 torch engine built in the WebUI's process (held to the denoising-loop gate), serving
    generations alone: the tiny checkpoint's other engines are removed first, as the router picks
    among all of a checkpoint's engines."""
    _, engines = webui.request("GET", "/trt-unet/v1/engines")
    for entry in engines:
        if entry["checkpoint"]["name"] == "tiny":
            webui.request("DELETE", f"/trt-unet/v1/engines/{entry['id']}")
    engine = built(webui, "torch int8, 64 px, in the WebUI's process",
                   {"backend": "torch", "precision": "int8", "profile": profile(64, 64, tokens=75)})
    if not engine:
        return
    accuracy = engine["accuracy"]
    check(engine["precision"] == "int8" and accuracy["loop_rel_error"] <= accuracy["loop_tolerance"],
          f"registered with its loop figures: {accuracy['loop_rel_error']:.1%} at worst over "
          f"{accuracy['loop_steps']:.0f} steps (allowed {accuracy['loop_tolerance']:.0%})")
    fast, info, _ = webui.txt2img("a cat", {"sd_unet": "Automatic"})
    ref, _, _ = webui.txt2img("a cat", {"sd_unet": "None"})
    value = trt_value(info)
    mse = float(np.mean((fast.astype(np.float64) - ref) ** 2))
    psnr = 10 * np.log10(255.0 ** 2 / mse) if mse else float("inf")
    check("[torch int8] 64x64 px" in value and "fallback" not in value,
          f"a generation runs on the INT8 engine ({value}); the decoded image is {max_diff(fast, ref)}/255 at "
          f"most and {psnr:.1f} dB PSNR from the built-in UNet's")
    lora = trt_value(webui.txt2img("<lora:tinylora:1> a cat", {"sd_unet": "Automatic"})[1])
    check("[torch int8]" in lora and "LoRA applied" in lora and "fallback" not in lora,
          f"a LoRA is re-quantized into the INT8 engine, no calibration: {lora}")


def make_data_dir(harness: Path) -> Path:
    data = Path(tempfile.mkdtemp(prefix="trt-webui-check-"))
    models = data / "models" / "Stable-diffusion"
    models.mkdir(parents=True)
    shutil.copy(harness / "checkpoints" / "tiny.safetensors", models / "tiny.safetensors")
    shutil.copy(harness / "checkpoints" / "tiny.yaml", models / "tiny.yaml")
    # a refiner: the same tiny model with its UNet changed, so its engines differ from the base's
    state = load_file(str(models / "tiny.safetensors"))
    g = torch.Generator().manual_seed(11)
    for key in state:
        if key.startswith("model.diffusion_model.") and state[key].is_floating_point():
            state[key] = state[key] * (1 + 0.1 * torch.randn(state[key].shape, generator=g))
    save_file(state, str(models / "tiny2.safetensors"))
    shutil.copy(models / "tiny.yaml", models / "tiny2.yaml")
    shapes = {k[len("model.diffusion_model."):]: tuple(v.shape) for k, v in state.items()
              if k.startswith("model.diffusion_model.")}
    (data / "models" / "Lora").mkdir()
    save_file(lora_tensors(shapes, seed=0, scale=1.0), str(data / "models" / "Lora" / "tinylora.safetensors"))
    save_file(lora_tensors(shapes, seed=5, scale=0.7), str(data / "models" / "Lora" / "otherlora.safetensors"))
    # every key a request overrides is in the config (else the WebUI lets overrides leak)
    (data / "config.json").write_text(json.dumps({
        "sd_model_checkpoint": "tiny.safetensors", "sd_unet": "None", "sd_vae": "Automatic",
        "CLIP_stop_at_last_layers": 1, "samples_save": False, "grid_save": False, "lora_functional": False}))
    return data


def start_webui(harness: Path, extension: Path, data: Path, port: int) -> tuple[subprocess.Popen, Path]:
    log = data / "webui.log"
    env = dict(os.environ, PORT=str(port), DATA_DIR=str(data), TIMEOUT="5400", EXTRA_ARGS="--api-auth user:pass")
    proc = subprocess.Popen([str(harness / "run_webui.sh"), str(extension)], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT)
    for _ in range(300):
        if "Startup time" in log.read_text(errors="replace"):
            return proc, log
        if proc.poll() is not None:
            break
        time.sleep(1)
    raise RuntimeError(f"the WebUI did not start; see {log}")


R = {"min": 1, "opt": 1, "max": 2}


def profile(lo: int, hi: int, tokens: int = 150) -> dict:
    return {"batch": R, "height": {"min": lo, "opt": lo, "max": hi}, "width": {"min": lo, "opt": lo, "max": hi},
            "tokens": {"min": 75, "opt": 75, "max": tokens}}


def compare(webui: WebUI, what: str, prompt: str, settings: dict | None = None, expect: tuple[str, ...] = (),
            **fields) -> str:
    """Engines (sd_unet Automatic) against the built-in UNet (None): the same image within 2/255."""
    fast, info, api_info = webui.txt2img(prompt, {"sd_unet": "Automatic", **(settings or {})}, **fields)
    ref, _, _ = webui.txt2img(prompt, {"sd_unet": "None", **(settings or {})}, **fields)
    plain, _, _ = webui.txt2img("a cat", {"sd_unet": "None", **(settings or {})}, **fields)
    value, diff = trt_value(info), max_diff(fast, ref)
    effect = f", LoRA changes {max_diff(ref, plain)}/255" if "<lora" in prompt else ""
    ok = diff <= MAX_DIFF and all(e in value for e in expect) and "fallback" not in value
    ok = ok and isinstance(api_info["extra_generation_params"].get("TensorRT"), str)
    check(ok, f"{what}: {diff}/255 from the built-in UNet{effect}; TensorRT: {value}")
    return value


def lora_scenarios(webui: WebUI, label: str, hires_label: str) -> None:
    applied = "LoRA applied to the engines: "
    compare(webui, "no LoRA", "a cat", expect=(label,))
    compare(webui, "LoRA 1", "<lora:tinylora:1> a cat", expect=(label, applied + "tinylora:1"))
    compare(webui, "LoRA 0.5", "<lora:tinylora:0.5> a cat", expect=(label, applied + "tinylora:0.5"))
    value = compare(webui, "LoRA off again", "a cat", expect=(label,))
    check("LoRA" not in value, "no LoRA in the infotext once it is off")
    compare(webui, "two LoRAs", "<lora:tinylora:0.8> <lora:otherlora:0.6> a cat",
            expect=(applied + "tinylora:0.8, otherlora:0.6",))
    compare(webui, "LoRA, functional mode", "<lora:tinylora:1> a cat", {"lora_functional": True},
            expect=(label, applied + "tinylora:1"))
    compare(webui, "LoRA with hires fix", "<lora:tinylora:0.7> a cat", expect=(f"first pass: {label}", f"hires pass: {hires_label}"),
            enable_hr=True, hr_scale=2, hr_upscaler="Latent", denoising_strength=0.6, hr_second_pass_steps=2)


def built(webui: WebUI, what: str, body: dict) -> dict | None:
    started = time.time()
    try:
        job = webui.build(body)
    except (RuntimeError, TimeoutError) as e:
        check(False, f"build {what}: {e}")
        return None
    ok = check(job["state"] == "done", f"build {what}: {job['state']} in {time.time() - started:.0f} s {job['error']}")
    return job["result"] if ok else None


def api_checks(webui: WebUI, log: Path) -> None:
    anonymous = WebUI(webui.url)
    routes = [("GET", "/trt-unet/v1/engines"), ("POST", "/trt-unet/v1/builds"), ("GET", "/trt-unet/v1/builds/1"),
              ("DELETE", "/trt-unet/v1/builds/1"), ("DELETE", "/trt-unet/v1/engines/x"), ("GET", "/sdapi/v1/sd-models")]
    codes = {path: anonymous.request(method, path, {} if method == "POST" else None)[0] for method, path in routes}
    check(all(code == 401 for code in codes.values()), f"401 without credentials: {codes}")
    check(webui.request("GET", "/trt-unet/v1/engines")[0] == 200, "200 with the WebUI's credentials")
    png = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(png, "PNG")
    before = log.read_text(errors="replace")
    status, answer = webui.request("POST", "/sdapi/v1/interrogate",
                                   {"image": base64.b64encode(png.getvalue()).decode(), "model": "clip"})
    said = log.read_text(errors="replace")[len(before):]
    check("No module named 'models.blip'" not in said and "models.blip" not in str(answer),
          f"interrogate finds BLIP's models package (answer {status}; it stops later at the BLIP weights, which "
          f"cannot be downloaded here: {'download' in said.lower() or 'http' in said.lower()})")


def arguments(argv: list[str], description: str, port: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("harness", type=Path)
    parser.add_argument("--restore-venv", action="store_true")
    parser.add_argument("--port", type=int, default=port)
    args = parser.parse_args(argv)
    args.harness = args.harness.resolve()
    return args


def main(argv: list[str]) -> int:
    args = arguments(argv, __doc__, 7871)
    harness = args.harness
    extension = installed_extension(harness, args.restore_venv)
    rtx = install_tensorrt_rtx(harness, extension)
    data = make_data_dir(harness)
    proc, log = start_webui(harness, extension, data, args.port)
    webui = WebUI(f"http://127.0.0.1:{args.port}", AUTH)
    try:
        check(True, f"the WebUI started with the extension ({data})")
        api_checks(webui, log)
        ort = "[onnxruntime fp32] 64-128x64-128 px"
        first = built(webui, "onnxruntime fp32, 64-128 px", {"backend": "onnxruntime", "precision": "fp32",
                                                               "profile": profile(64, 128)})
        lora_scenarios(webui, ort, ort)

        _, info, api_info = webui.txt2img("a cat", {"sd_unet": "Automatic"}, width=136, height=136)
        warning = api_info["extra_generation_params"].get("TensorRT warning", "")
        check("136x136 px" in warning and "fallback: no engine covers 136x136 px" in trt_value(info),
              f"a call no engine covers: the API's info has the warning ({warning[:90]}...)")

        webui.txt2img("<lora:tinylora:1> a cat", {"sd_unet": "None"})  # the built-in UNet keeps it merged
        again = built(webui, "onnxruntime fp16, 72 px, right after a LoRA generation (a new export)",
                      {"backend": "onnxruntime", "precision": "fp16", "profile": profile(72, 72)})
        if first and again:
            check(again["checkpoint"]["weights"] == first["checkpoint"]["weights"],
                  f"it holds the checkpoint's own weights (digest {again['checkpoint']['weights'][:12]})")
            compare(webui, "no LoRA, 72 px, on the engine exported after the LoRA generation", "a cat",
                    expect=("[onnxruntime fp16] 72x72 px",), width=72, height=72)
            compare(webui, "LoRA, 72 px, on that engine", "<lora:tinylora:1> a cat",
                    expect=("[onnxruntime fp16] 72x72 px", "LoRA applied"), width=72, height=72)

        torch_engine = built(webui, "torch fp32, 64 px (Inductor on the CPU)",
                             {"backend": "torch", "precision": "fp32", "profile": profile(64, 64, tokens=75)})
        if torch_engine:
            lora_scenarios(webui, "[torch fp32] 64x64 px", ort)

        webui.request("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "tiny2.safetensors"})
        built(webui, "onnxruntime fp32 for the refiner tiny2", {"backend": "onnxruntime", "precision": "fp32",
                                                               "profile": profile(64, 128)})
        webui.request("POST", "/sdapi/v1/options", {"sd_model_checkpoint": "tiny.safetensors"})
        compare(webui, "refiner tiny2 from half-way", "a cat", expect=("first pass: ", "; refiner tiny2: [onnxruntime fp32]"),
                refiner_checkpoint="tiny2.safetensors", refiner_switch_at=0.5)
        status, answer = webui.request("POST", "/trt-unet/v1/builds", {"backend": "onnxruntime", "precision": "fp32",
                                                                       "profile": profile(80, 80)})
        check(status == 202 and answer.get("checkpoint") == "tiny",
              f"a build right after the refiner generation is for the selected checkpoint ({answer.get('checkpoint')})")
        if status == 202:
            webui.request("DELETE", f"/trt-unet/v1/builds/{answer['job_id']}")
            while webui.request("GET", f"/trt-unet/v1/builds/{answer['job_id']}")[1]["state"] == "running":
                time.sleep(1)
        if rtx:
            tensorrt_checks(webui)
        quantized_checks(webui)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return summary(log)


def installed_extension(harness: Path, restore_venv: bool) -> Path:
    """A fresh clone of this checkout's HEAD, installed by its install.py (into the WebUI's own
    packages again first, with `restore_venv`)."""
    if restore_venv:
        shutil.rmtree(harness / "venv")
        shutil.copytree(harness / "venv.pristine", harness / "venv", symlinks=True)
    extension = Path(tempfile.mkdtemp(prefix="trt-ext-")) / "sd-unet-trt"
    subprocess.run(["git", "clone", "-q", str(REPO), str(extension)], check=True)
    install(harness, extension)
    return extension


def pinned_install(python: Path, *installs: list[str]) -> tuple[list[str], list[str], str]:
    """pip installs into the venv of `python`, constrained to the versions it has: (packages whose
    version changed, packages added, the last failure's message or "")."""
    before = freeze(python)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pins:
        pins.write("\n".join(f"{name}=={version}" for name, version in before.items()) + "\n")
    failure = ""
    for args in installs:
        done = subprocess.run([str(python), "-m", "pip", "install", "-q", "-c", pins.name, *args],
                              capture_output=True, text=True)
        failure = done.stderr[-300:] if done.returncode else failure
    after = freeze(python)
    return [name for name in before if after.get(name) != before[name]], sorted(set(after) - set(before)), failure


def run_checks(harness: Path, extension: Path, data: Path, port: int, started: str, checks) -> int:
    """Starts the WebUI, runs `checks(webui)`, stops it; the summary's exit code."""
    proc, log = start_webui(harness, extension, data, port)
    webui = WebUI(f"http://127.0.0.1:{port}", AUTH)
    try:
        check(True, f"the WebUI started with {started} ({data})")
        checks(webui)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return summary(log)


def summary(log: Path) -> int:
    failed = [what for ok, what in RESULTS if not ok]
    print(f"\n{len(RESULTS) - len(failed)} of {len(RESULTS)} checks passed; the WebUI's log: {log}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
