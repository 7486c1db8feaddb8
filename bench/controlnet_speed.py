"""One ControlNet unit on one GPU: what a sampler step costs with the engines and without.

    python bench/controlnet_speed.py --out DIR                                 (on a CUDA GPU)
    python bench/controlnet_speed.py --models tiny --device cpu --out DIR      (smoke run)

Per model (SD1.5 512 px, SDXL 1024 px; one step = batch 2, one image with CFG, fp16, random
weights in the real architectures), rows timed as the WebUI runs them:
- eager: the ControlNet and then the UNet with its residuals, both PyTorch eager (what a step costs
  in the WebUI with sd-webui-controlnet and no engine);
- controlnet_alone: the ControlNet model's share of that;
- engine_with_controlnet: the ControlNet eager, its residuals into a torch-backend engine with
  ControlNet inputs through the router (what the bridge does);
- engine_inputs_zero: that engine with no ControlNet (zeros into its residual inputs);
- engine_plain: a plain engine of the same profile (the cost of the inputs is the difference);
- controlnet_engine_<backend> (issue 23): the ControlNet on its own engine, its residuals into that
  UNet engine (what the bridge does when both have engines); controlnet_engine_alone_<backend>: the
  ControlNet engine's share. torch: compiled from the module as the UNet's; tensorrt, onnxruntime:
  through the product's build (build_controlnet_engine: export, ONNX check, build, engine check) of
  the random ControlNet saved to a file.
Each engine row's output is checked against the fp32 PyTorch UNet with the eager ControlNet's residuals.
Results: DIR/<model>-controlnet.json, written row by row.
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import torch

from controlnet_model import controlnet_config, make_controlnet, unet_control
from measure import environment, log, rel_error, release, sync, time_steps
from steps import router_step
from workloads import WORKLOADS, make_inputs, make_unet

from sd_unet_trt.trt_core.backends.base import BuildRequest  # noqa: E402
from sd_unet_trt.trt_core.backends import get_backend  # noqa: E402
from sd_unet_trt.trt_core.controlnet.build import build_controlnet_engine  # noqa: E402
from sd_unet_trt.trt_core.controlnet.family import ControlNetFamily  # noqa: E402
from sd_unet_trt.trt_core.profiles import Profile  # noqa: E402
from sd_unet_trt.trt_core.workspace import Workspace  # noqa: E402


def control_inputs(work, device, dtype, seed: int) -> tuple:
    generator = torch.Generator(device).manual_seed(seed)
    inputs = make_inputs(work, device, dtype, generator)
    hint = torch.rand(1, 3, work.px, work.px, generator=generator, device=device).to(dtype).expand(work.rows, -1, -1, -1)
    return inputs, hint


def controlnet_engine(backend_name: str, controlnet32, work, profile: Profile, precision: str,
                      device: torch.device, out: Path):
    """The ControlNet's engine: compiled from the module (torch), else built from a file by the product."""
    backend = get_backend(backend_name)
    family = ControlNetFamily(controlnet_config(work.family.unet_config()))
    if backend_name == "torch":
        file = out / f"{work.family.name}-controlnet-engine{backend.file_suffix}"
        backend.build(BuildRequest(Path("unused.onnx"), family, profile, precision, module=controlnet32,
                                   device=device.type), file)
        return backend.load(file, "controlnet", family, profile, device=device.type), file
    from safetensors.torch import save_file
    path = out / f"{work.family.name}-controlnet.safetensors"
    save_file({k: v.detach().contiguous().cpu() for k, v in controlnet32.state_dict().items()}, str(path))
    workspace = Workspace(out / "controlnet-workspace")
    entry = build_controlnet_engine(workspace, path, profile, backend, precision, device=device)
    file = workspace.manifest().file_path(entry)
    return backend.load(file, entry.id, family, profile, device=device.type), None


def run_model(key: str, device: torch.device, out: Path, seconds: float, controlnet_backends: list[str]) -> None:
    work = WORKLOADS[key]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    path = out / f"{key}-controlnet.json"
    result = {"model": work.name, "environment": environment(device), "rows": []}

    def add(row):
        result["rows"].append(row)
        path.write_text(json.dumps(result, indent=1))
        log("row " + json.dumps(row))

    unet32 = make_unet(work.family, device)
    config = work.family.unet_config()
    controlnet32 = make_controlnet(config, device)
    controlnet = make_controlnet(config, device).to(dtype)  # the same seed: the same weights
    sets = [control_inputs(work, device, dtype, seed) for seed in range(3)]
    with torch.inference_mode():
        residual_sets = [unet_control(controlnet(*inputs[:1], hint, *inputs[1:]), config) for inputs, hint in sets]
        y = lambda inputs: inputs[3] if len(inputs) > 3 else None  # noqa: E731
        refs = [unet32(*(t.float() if t.is_floating_point() else t for t in inputs[:3]), y(inputs),
                       [r.float() for r in residuals]) for (inputs, _), residuals in zip(sets, residual_sets)]
    unet = make_unet(work.family, device).to(dtype)

    def with_controlnet(run):
        def step(item):
            inputs, hint = item
            with torch.inference_mode():
                residuals = unet_control(controlnet(inputs[0], hint, *inputs[1:]), config)
            return run(inputs, residuals)
        return step

    def eager(inputs, residuals):
        with torch.inference_mode():
            return unet(*inputs[:3], y(inputs), residuals)

    add({"name": "eager", "label": f"ControlNet + UNet, PyTorch eager {str(dtype).removeprefix('torch.')}",
         **time_steps(with_controlnet(eager), sets, device, 20, seconds)})
    add({"name": "controlnet_alone", "label": "the ControlNet model alone, eager",
         **time_steps(lambda item: controlnet(item[0][0], item[1], *item[0][1:]), sets, device, 20, seconds)})

    backend = get_backend("torch")
    profile = Profile.static(1, work.px, work.px)
    precision = "fp16" if device.type == "cuda" else "fp32"

    def add_controlnet_engine_rows(backend_name: str, run) -> None:
        """Both engines: the ControlNet's residuals into the UNet engine (`run`)."""
        name = f"controlnet_engine_{backend_name}"
        file = None
        try:
            started = time.monotonic()
            engine, file = controlnet_engine(backend_name, controlnet32, work, profile, precision, device, out)
            build_s = time.monotonic() - started

            def residuals(item):
                inputs, hint = item
                return unet_control(engine(*inputs[:3], y(inputs), control=[hint]), config)
            worst = max(rel_error(run(item[0], residuals(item)), ref) for item, ref in zip(sets, refs))
            add({"name": name, "label": f"ControlNet {backend_name} engine, residuals into the UNet engine",
                 "build_s": build_s, "rel_error_vs_fp32": worst,
                 **time_steps(lambda item: run(item[0], residuals(item)), sets, device, 20, seconds)})
            add({"name": f"controlnet_engine_alone_{backend_name}", "label": f"the ControlNet {backend_name} engine alone",
                 **time_steps(residuals, sets, device, 20, seconds)})
            engine.close()
        except Exception as e:  # one failed row must not lose the others
            add({"name": name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]})
        finally:
            if file is not None:
                file.unlink(missing_ok=True)
            release(device)
    for name, family in (("engine_with_controlnet", work.family.with_controlnet()), ("engine_plain", work.family)):
        file = out / f"{key}-{name}{backend.file_suffix}"
        started = time.monotonic()
        try:
            backend.build(BuildRequest(Path("unused.onnx"), family, profile, precision, module=unet32,
                                       device=device.type), file)
            build_s = time.monotonic() - started
            engine = backend.load(file, name, family, profile, device=device.type)
            step = router_step(engine)
            if family.controlnet:
                run = lambda inputs, residuals: step((*inputs[:3], y(inputs), residuals))  # noqa: E731
                worst = max(rel_error(run(inputs, residuals), ref) for (inputs, _), residuals, ref
                            in zip(sets, residual_sets, refs))
                add({"name": name, "label": "ControlNet eager, residuals into the engine via the router",
                     "build_s": build_s, "rel_error_vs_fp32": worst,
                     **time_steps(with_controlnet(run), sets, device, 20, seconds)})
                add({"name": "engine_inputs_zero", "label": "that engine without ControlNet (zero residuals)",
                     **time_steps(lambda item: step(item[0]), sets, device, 20, seconds)})
                for backend_name in controlnet_backends:
                    add_controlnet_engine_rows(backend_name, run)
            else:
                add({"name": name, "label": "a plain engine, no ControlNet", "build_s": build_s,
                     **time_steps(lambda item: step(item[0]), sets, device, 20, seconds)})
            engine.close()
        except Exception as e:  # one failed row must not lose the others
            add({"name": name, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]})
        finally:
            file.unlink(missing_ok=True)
            release(device)
    sync(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--seconds", type=float, default=6.0, help="timing budget per row")
    parser.add_argument("--controlnet-backends", default="torch",
                        help="comma-separated backends of the ControlNet engine rows (torch, tensorrt, onnxruntime)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for key in args.models.split(","):
        run_model(key, torch.device(args.device), args.out, args.seconds, args.controlnet_backends.split(","))


if __name__ == "__main__":
    main()
