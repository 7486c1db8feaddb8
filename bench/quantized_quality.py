"""What each precision costs in image quality over a whole denoising loop, on the real SD1.5 and SDXL
architectures (random weights, seeded): the final latent of a 20-step Euler loop with CFG 7
(trt_core/quality.py) against the fp32 UNet's, for fp16, bf16 and Model Optimizer's calibrated INT8
and FP8 (fake-quantized in PyTorch: what the Q/DQ export computes), plus one call's error.

    python bench/quantized_quality.py --models sd15,sdxl --out DIR      (on a CUDA GPU)

Writes DIR/quantized_quality.json. Random weights punish quantization harder than trained ones:
these figures bound the gate's tolerance from above, they do not set it."""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

import checkout  # noqa: F401  (sd_unet_trt from this checkout)
from sd_unet_trt.models.families import FAMILIES  # noqa: E402
from sd_unet_trt.models.unet import seeded_unet  # noqa: E402
from sd_unet_trt.trt_core.quality import conditionings, denoise  # noqa: E402
from sd_unet_trt.trt_core.quantize import calibration_inputs, quantized_unet  # noqa: E402

MODELS = {"sd15": "sd1", "sdxl": "sdxl", "tiny": "tiny"}  # tiny: a CPU smoke run


def cast_call(module: torch.nn.Module, dtype: torch.dtype):
    """The module called with its inputs in `dtype` (timesteps stay float32), output in float32."""
    def call(*args):
        return module(*[a.to(dtype) if a.is_floating_point() and a.dim() > 1 else a for a in args]).float()
    return call


def measure(model_key: str, steps: int, seeds: int, prompts: int, device: str) -> dict:
    family = FAMILIES[MODELS[model_key]]
    device = torch.device(device)
    latent = (family.native_px // 8, family.native_px // 8)
    started = time.monotonic()
    reference = seeded_unet(family.unet_config()).eval().to(device)
    result = {"model": model_key, "latent": latent, "steps": steps, "cases": seeds * prompts,
              "make_seconds": round(time.monotonic() - started, 1)}
    conds = conditionings(family, prompts, device)
    probe = [t.to(device) for t in calibration_inputs(family, latent, count=1, seed=123)[0]]

    def run_loops(fn) -> list[torch.Tensor]:
        return [denoise(fn, family, latent, c, u, y, steps, seed=s) for c, u, y in conds for s in range(seeds)]
    with torch.no_grad():
        ref_out = reference(*probe).float()
        ref_latents = run_loops(reference)
    candidates = {
        "fp16": lambda: cast_call(copy.deepcopy(reference).half(), torch.float16),
        "bf16": lambda: cast_call(copy.deepcopy(reference).bfloat16(), torch.bfloat16),
        "int8": lambda: quantized_unet(reference, "int8", calibration_inputs(family, latent)),
        "fp8": lambda: quantized_unet(reference, "fp8", calibration_inputs(family, latent)),
    }
    for name, make in candidates.items():
        started = time.monotonic()
        fn = make()
        made = time.monotonic() - started
        with torch.no_grad():
            one = ((fn(*probe).float() - ref_out).norm() / ref_out.norm()).item()
            started = time.monotonic()
            latents = run_loops(fn)
            loop_seconds = time.monotonic() - started
        errors = [((a - b).norm() / b.norm()).item() for a, b in zip(latents, ref_latents)]
        result[name] = {"one_call_rel_error": one, "loop_rel_error_max": max(errors),
                        "loop_rel_error_mean": sum(errors) / len(errors), "prepare_seconds": round(made, 1),
                        "loop_seconds": round(loop_seconds, 1)}
        print(model_key, name, result[name], flush=True)
        del fn
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sd15,sdxl")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference is fp32, not TF32
    torch.backends.cudnn.allow_tf32 = False
    results = {"gpu": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
               "runs": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for model in args.models.split(","):
        results["runs"].append(measure(model, args.steps, args.seeds, args.prompts, args.device))
        (args.out / "quantized_quality.json").write_text(json.dumps(results, indent=1))  # each model as it ends
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
