"""Full-size check, not part of the suite: SD1.5 and SDXL UNets exported to ONNX (fp16) and built
with TensorRT for RTX on this machine's CPU, no GPU. Export time, build time, engine size and each
step's peak RAM.

    python bench/rtx_cpu_build.py --models sd15,sdxl --out DIR

The UNets are the real architectures with random weights (seeded): time, size and memory do not
depend on the values, and no weights are downloaded. Each step runs in its own child process, so
its peak RAM (ru_maxrss) is its own. The profile is each model's default preset (the one-click
engine of the tab): SD1.5 384-768 px, SDXL 768-1536 px, batch 1-4, up to 150 tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import checkout  # noqa: F401  (makes sd_unet_trt importable from this checkout)

FAMILIES = {"sd15": "sd1", "sdxl": "sdxl"}


def step_export(model: str, folder: Path) -> dict:
    import torch

    from sd_unet_trt.models.families import family_named
    from sd_unet_trt.models.unet import seeded_unet
    from sd_unet_trt.trt_core.export import export_onnx

    family = family_named(FAMILIES[model])
    started = time.monotonic()
    unet = seeded_unet(family.unet_config()).eval().half()  # fp16 at once: SDXL's fp32 copy alone is 10 GB
    made = time.monotonic() - started
    with torch.inference_mode():
        result = export_onnx(unet, family, folder, weights="fp16", device="cpu")
    size = sum(p.stat().st_size for p in folder.iterdir() if p.name.startswith("unet.onnx"))
    return {"parameters": sum(p.numel() for p in unet.parameters()), "make_s": round(made, 1),
            "export_s": round(result.seconds, 1), "onnx_bytes": size}


def step_build(model: str, folder: Path, engine: Path) -> dict:
    from sd_unet_trt.models.families import family_named
    from sd_unet_trt.trt_core.backends.base import BuildRequest
    from sd_unet_trt.trt_core.backends import get_backend
    from sd_unet_trt.trt_core.profiles import presets_for

    family = family_named(FAMILIES[model])
    preset = presets_for(family)[0]
    backend = get_backend("tensorrt")
    started = time.monotonic()
    outcome = backend.build(BuildRequest(folder / "unet.onnx", family, preset.profile, "fp16"), engine)
    return {"library": backend.version(), "profile": preset.name, "build_s": round(time.monotonic() - started, 1),
            "engine_bytes": engine.stat().st_size, "targets": outcome.details["targets"],
            "refittable": outcome.details["refittable"]}


def child(args) -> None:
    folder = Path(args.dir)
    try:
        result = (step_export(args.model, folder) if args.step == "export"
                  else step_build(args.model, folder, folder.parent / f"{args.model}.trt"))
    except Exception as e:  # a step that fails (e.g. out of memory) is a row of the results
        result = {"error": f"{type(e).__name__}: {e}"}
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    print("RESULT " + json.dumps(result), flush=True)


def run_step(step: str, model: str, folder: Path) -> dict:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, __file__, "--child", step, "--model", model, "--dir", str(folder)],
                          capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(lines[-1][7:]) if lines else {"error": f"exit {proc.returncode}: {proc.stderr[-1500:]}"}
    result["wall_s"] = round(time.monotonic() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--out")
    parser.add_argument("--child", choices=["export", "build"])
    parser.add_argument("--model")
    parser.add_argument("--dir")
    args = parser.parse_args()
    if args.child:
        args.step = args.child
        child(args)
        return
    if not args.out:
        parser.error("--out is required")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    results = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "ram_gib": round(ram / 2**30, 1)}}
    for model in args.models.split(","):
        folder = out / f"{model}-onnx"
        results[model] = {"export": run_step("export", model, folder)}
        print(model, "export", results[model]["export"], flush=True)
        if "error" not in results[model]["export"]:
            results[model]["build"] = run_step("build", model, folder)
            print(model, "build", results[model]["build"], flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
