"""The precision ladder on one GPU: the torch backend built in fp32, fp16, bf16, INT8 and FP8 (and
INT8/FP8 layer recipes), each timed through the router, with its build time, engine size, peak
memory and quality; torchao's INT8/FP8 recipes under torch.compile beside them when torchao is
importable.

    python bench/quantized_speed.py --out DIR                                    (on a CUDA GPU)
    python bench/quantized_speed.py --plan tiny:eager_fp16,int8 --device cpu --out DIR   (smoke run)

One step = one UNet call of batch 2 (one image with CFG), random weights in the real architectures
(bench/workloads.py), inputs in fp16 as the WebUI sends them. Quality, against the fp32 UNet of the
same weights: one call's relative error, and the final latent of 20-step Euler loops with CFG 7
(trt_core/quality.py: 2 seeds x 2 prompts) and those latents' images through SD's VAE decoder
(random weights, models/vae.py) as PSNR. Results go to DIR/<model>-precisions.json row by row;
and DIR/precisions.png is drawn from them (bench/chart.py)."""
from __future__ import annotations

import argparse
import copy
import json
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from gemm_shapes import linear_shapes, measure_shapes
from measure import Footprint, environment, log, rel_error, release, sync, time_steps
from quantized_gate import gate_figures
from steps import compiled_step, eager_step, kernel_breakdown, router_step, separate_quantization_kernels
from variants import VARIANTS
from workloads import WORKLOADS, make_inputs, make_unet

from sd_unet_trt.trt_core.backends.base import BuildRequest  # noqa: E402
from sd_unet_trt.trt_core.backends import get_backend  # noqa: E402
from sd_unet_trt.trt_core.backends.torch_compiled.quantized import LAYER_SETS  # noqa: E402
from sd_unet_trt.trt_core.profiles import Profile  # noqa: E402
from sd_unet_trt.models.vae import decode, seeded_decoder  # noqa: E402
from sd_unet_trt.trt_core.quality import conditionings, denoise, psnr_db  # noqa: E402

STATIC = {"activation_scales": "static"}
# INT8 is measured on every GPU, also where the backend does not offer it (recipe.py's rule)
INT8 = {"int8_on_any_gpu": True}
# row name -> (precision, build options)
ENGINE_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "fp32": ("fp32", {}), "fp16": ("fp16", {}), "bf16": ("bf16", {}),
    "int8": ("int8", INT8), "fp8": ("fp8", {}),
    **{f"{p}_{layers}": (p, {"quantize_layers": layers, **(INT8 if p == "int8" else {})})
       for p in ("int8", "fp8") for layers in LAYER_SETS if layers != "transformer"},
    # the fp16 build variants of bench/variants.py (SDPA kernel forced, GEMM autotuning, ...)
    **{f"fp16_{name}": ("fp16", variant.build) for name, variant in VARIANTS.items() if name != "default"},
    # FP8 with static per-tensor scales (issue 22): each layer set; per-channel weights; exact accumulation
    **{f"fp8s_{layers}": ("fp8", {**STATIC, "quantize_layers": layers}) for layers in LAYER_SETS},
    "fp8s_transformer_channel": ("fp8", {**STATIC, "weight_scales": "channel"}),
    "fp8s_transformer_exact": ("fp8", {**STATIC, "fast_accum": False}),
}
TORCHAO_ROWS = ("torchao_int8", "torchao_fp8")
LOOP_SEEDS, LOOP_PROMPTS, LOOP_STEPS = 2, 2, 20


class Ladder:
    def __init__(self, key: str, device: torch.device, out_dir: Path, engines: Path, seconds: float):
        self.key, self.work, self.device, self.seconds = key, WORKLOADS[key], device, seconds
        self.path = out_dir / f"{key}-precisions.json"
        self.engines = engines
        self.engines.mkdir(parents=True, exist_ok=True)
        self.result: dict[str, Any] = {"workload": self.work.name, "model": key, "env": environment(device),
                                       "loop": {"seeds": LOOP_SEEDS, "prompts": LOOP_PROMPTS, "steps": LOOP_STEPS,
                                                "cfg": 7.0, "reference": "fp32 PyTorch UNet"},
                                       "rows": []}

    def prepare(self) -> None:
        t0 = time.monotonic()
        work = self.work
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        self.master = make_unet(work.family, self.device)
        gen = torch.Generator(self.device).manual_seed(1234)
        self.check = make_inputs(work, self.device, torch.float32, gen)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.timing = [make_inputs(work, self.device, dtype, gen) for _ in range(2)]
        self.latent = (work.latent, work.latent)
        self.conds = conditionings(work.family, LOOP_PROMPTS, self.device)
        with torch.inference_mode():
            self.ref_out = self.master(*self.check).double()
            self.ref_latents = self.loops(self.master)
        self.decoder = seeded_decoder().to(self.device)  # SD's VAE decoder, random weights: a relative PSNR
        self.ref_images = [self.decode(latent) for latent in self.ref_latents]
        self.result["prepare_seconds"] = round(time.monotonic() - t0, 1)
        log(f"{work.name}: references ready in {self.result['prepare_seconds']} s")

    def loops(self, fn) -> list[torch.Tensor]:
        return [denoise(fn, self.work.family, self.latent, c, u, y, LOOP_STEPS, seed=s)
                for c, u, y in self.conds for s in range(LOOP_SEEDS)]

    def quality(self, fn) -> dict[str, float]:
        with torch.no_grad():
            one = rel_error(fn(*self.check), self.ref_out)
            latents = self.loops(fn)
            errors = [rel_error(got, ref) for got, ref in zip(latents, self.ref_latents)]
            psnrs = [psnr_db(self.decode(got), image) for got, image in zip(latents, self.ref_images)]
        return {"rel_err": one, "loop_rel_error_max": max(errors), "loop_rel_error_mean": sum(errors) / len(errors),
                "image_psnr_db_min": min(psnrs)}

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return decode(self.decoder, latent, self.work.family.name)

    def add(self, row: dict[str, Any]) -> None:
        eager = next((r for r in self.result["rows"] if r["name"] == "eager_fp16" and "median_ms" in r), None)
        if eager and "median_ms" in row:
            row["speedup_over_eager"] = eager["median_ms"] / row["median_ms"]
        fp16 = next((r for r in self.result["rows"] if r["name"] == "fp16" and "median_ms" in r), None)
        if fp16 and "median_ms" in row:
            row["speedup_over_fp16_engine"] = fp16["median_ms"] / row["median_ms"]
        self.result["rows"].append(row)
        self.path.write_text(json.dumps(self.result, indent=1))
        log("row " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                                 if k != "breakdown"}))

    def run_eager(self) -> None:
        unet = copy.deepcopy(self.master).half() if self.device.type == "cuda" else self.master
        memory = Footprint(self.device, owned=sum(p.numel() * p.element_size() for p in unet.parameters()))
        memory.start()
        step = eager_step(unet)
        row = {"name": "eager_fp16", "label": "PyTorch eager fp16, SDPA", **time_steps(step, self.timing, self.device, 20, self.seconds)}
        row["vram_mib"] = memory.mib()
        self.add(row)
        del unet, step
        release(self.device)

    def run_engine(self, name: str, breakdown: bool) -> None:
        precision, options = ENGINE_ROWS[name]
        backend = get_backend("torch")
        path = self.engines / f"{self.key}-{name}{backend.file_suffix}"
        profile = Profile.static(1, self.work.px, self.work.px)
        request = BuildRequest(Path("unused.onnx"), self.work.family, profile, precision, module=self.master,
                               device=self.device.type, options=options)
        t0 = time.monotonic()
        try:
            outcome = backend.build(request, path)
            build_s = time.monotonic() - t0
            release(self.device)
            memory = Footprint(self.device)
            memory.start()
            engine = backend.load(path, name, self.work.family, profile, device=self.device.type)
            try:
                self.add(self.measure_engine(name, engine, path, build_s, outcome.details, memory, breakdown, profile))
            finally:
                engine.close()
        finally:
            path.unlink(missing_ok=True)
            release(self.device)

    def measure_engine(self, name: str, engine, path: Path, build_s: float, details: dict, memory: Footprint,
                       breakdown: bool, profile: Profile) -> dict[str, Any]:
        precision, options = ENGINE_ROWS[name]
        step = router_step(engine)
        row = {"name": name, "precision": precision, "options": options, "label": f"torch backend {name} via router",
               "build_s": build_s, "file_mib": path.stat().st_size / 2**20,
               **{k: v for k, v in details.items() if k in ("quantized_layers", "quantized_weights", "compile_seconds")}}
        row.update(self.quality(lambda *a: step(a)))
        row.update(time_steps(step, self.timing, self.device, 20, self.seconds))
        row["vram_mib"] = memory.mib()
        if precision in ("int8", "fp8"):  # after timing: the gate's fp32 reference needs memory too
            row.update(gate_figures(engine, path, self.master, self.work.family, profile, self.device))
        if breakdown and self.device.type == "cuda":
            plain = get_backend("torch").load(path, "plain", self.work.family, profile, device=self.device.type,
                                              cuda_graphs=False)
            row["breakdown"] = kernel_breakdown(lambda inputs: plain(*inputs), self.timing[0], self.device, top=40)
            row["breakdown"]["separate_quantization_kernels"] = separate_quantization_kernels(
                row["breakdown"]["all_kernels_ms"])
            plain.close()
        return row

    def run_gemm_shapes(self) -> None:
        """The UNet's transformer GEMMs one by one in fp16, INT8 and FP8 (bench/gemm_shapes.py)."""
        shapes = linear_shapes(self.master, self.check)
        self.add({"name": "gemm_shapes", "label": "transformer GEMMs one by one (CUDA graph of repeats)",
                  **measure_shapes(shapes, self.device)})
        release(self.device)

    def run_torchao(self, name: str) -> None:
        from torchao.quantization import (Float8DynamicActivationFloat8WeightConfig,
                                          Int8DynamicActivationInt8WeightConfig, PerRow, quantize_)
        from sd_unet_trt.models.unet import BasicTransformerBlock

        unet = copy.deepcopy(self.master).half()
        wanted = {id(block.get_submodule(layer)) for block in unet.modules() if isinstance(block, BasicTransformerBlock)
                  for layer in LAYER_SETS["transformer"]}
        config = (Int8DynamicActivationInt8WeightConfig() if name == "torchao_int8"
                  else Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))
        quantize_(unet, config, filter_fn=lambda module, fqn: id(module) in wanted)
        torch._dynamo.reset()
        memory = Footprint(self.device, owned=sum(p.numel() * p.element_size() for p in unet.parameters()))
        memory.start()
        t0 = time.monotonic()
        step = compiled_step(unet)
        for _ in range(3):
            step(self.timing[0])
        sync(self.device)
        row = {"name": name, "label": f"torchao {name[8:]} (transformer linears, per-row) + torch.compile reduce-overhead",
               "build_s": time.monotonic() - t0}
        row.update(self.quality(lambda *a: step(tuple(t.half() if t.is_floating_point() and t.dim() > 1 else t
                                                       for t in a)).float()))
        row.update(time_steps(step, self.timing, self.device, 20, self.seconds))
        row["vram_mib"] = memory.mib()
        self.add(row)
        del unet
        torch._dynamo.reset()
        release(self.device)


ROW_NEEDS_S = {"sd15": 60, "sdxl": 110, "tiny": 60}  # a build, its checks and timing, about
# 8-bit builds compile longer (H200, issue 12: SD1.5 70-93 s, SDXL 236-238 s) and run the gate too
QUANTIZED_NEEDS_S = {"sd15": 110, "sdxl": 280, "tiny": 150}
DEFAULT_PLAN = ("sd15:eager_fp16,fp16,int8,fp8;sdxl:eager_fp16,fp16,int8,fp8;"
                "sd15:fp8_feed_forward,int8_feed_forward,bf16,fp32;sdxl:fp8_feed_forward,int8_feed_forward,bf16,fp32;"
                "sd15:torchao_int8,torchao_fp8;sdxl:torchao_int8,torchao_fp8")
# issue 22, one GPU call each (the most wanted rows first: the budget guard skips what does not fit)
PLANS = {
    "issue22-sd15": "sd15:gemm_shapes,eager_fp16,fp16,fp8s_transformer,fp8s_no_qkv,fp8s_feed_forward,"
                    "fp16_cudnn_attn,fp16_flash_attn,int8,fp8s_transformer_channel,fp8s_transformer_exact",
    "issue22-sdxl": "sdxl:gemm_shapes,eager_fp16,fp16,fp8s_no_qkv,fp8s_transformer",
    "issue22-sdxl-more": "sdxl:fp16,fp8s_feed_forward,fp16_flash_attn,fp16_cudnn_attn,int8",
    # autotuning ran past 7 minutes on SD1.5 (bench/NOTES.md): alone, --budget-s 580
    "issue22-autotune": "sd15:fp16_autotune,fp16",
    "issue22-tiny": "tiny:gemm_shapes,eager_fp16,fp16,fp8s_transformer,fp8s_no_qkv,fp8s_feed_forward,int8",
}


def row_needs_s(key: str, name: str) -> float:
    """About how long a row takes, for the budget guard."""
    if name == "gemm_shapes":
        return 30
    variant = VARIANTS.get(name.removeprefix("fp16_"))
    if name.startswith("fp16_") and variant:
        return variant.build_budget_s[key]
    precision = ENGINE_ROWS.get(name, ("",))[0]
    return QUANTIZED_NEEDS_S[key] if precision in ("int8", "fp8") else ROW_NEEDS_S[key]


def write_profile_summary(ladder: "Ladder", out: Path) -> None:
    """The fastest static FP8 row's top kernels, and any quantization kernel Inductor left unfused."""
    rows = [r for r in ladder.result["rows"] if r["name"].startswith("fp8s_") and "breakdown" in r]
    if not rows:
        return
    best = min(rows, key=lambda r: r["median_ms"])
    lines = [f"{ladder.work.name}: {best['name']} {best['median_ms']:.2f} ms/step, "
             f"kernels {best['breakdown']['total_ms']:.2f} ms in one profiled step", "", "| kernel | ms |", "|---|---|"]
    lines += [f"| `{name[:110]}` | {ms:.3f} |" for name, ms in best["breakdown"]["top_kernels_ms"]]
    separate = best["breakdown"]["separate_quantization_kernels"]
    lines += ["", f"kernels holding only an amax or a cast ({len(separate)}, {sum(separate.values()):.3f} ms):"]
    lines += [f"- `{name}` {ms:.3f} ms" for name, ms in separate.items()] or ["- none"]
    path = out / f"{ladder.key}-fp8-profile.md"
    path.write_text("\n".join(lines) + "\n")
    log(f"profile summary: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default=DEFAULT_PLAN,
                        help=f"a plan's name ({', '.join(PLANS)}) or model:row,row;model:row,... in the order to "
                             f"run (rows: gemm_shapes, eager_fp16, {', '.join(ENGINE_ROWS)}, {', '.join(TORCHAO_ROWS)})")
    parser.add_argument("--breakdown", default="fp16,fp8,int8,fp8s_transformer,fp8s_no_qkv,fp8s_feed_forward",
                        help="engine rows profiled kernel by kernel")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latest"))
    parser.add_argument("--engines", type=Path, default=Path("/tmp/quantized-speed-engines"))
    parser.add_argument("--seconds", type=float, default=2.0, help="timing seconds per row")
    parser.add_argument("--budget-s", type=float, default=540, help="start no row that would end after this")
    args = parser.parse_args()
    started = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    breakdown = set(args.breakdown.split(","))
    ladders: dict[str, Ladder] = {}
    for part in PLANS.get(args.plan, args.plan).split(";"):
        key, _, names = part.partition(":")
        if key not in ladders:
            ladders[key] = Ladder(key, torch.device(args.device), args.out, args.engines, args.seconds)
            ladders[key].prepare()
        ladder = ladders[key]
        for name in names.split(","):
            if time.monotonic() - started + row_needs_s(key, name) > args.budget_s:
                ladder.add({"name": name, "skipped": "the run's time budget was spent"})
                continue
            try:
                if name == "eager_fp16":
                    ladder.run_eager()
                elif name == "gemm_shapes":
                    ladder.run_gemm_shapes()
                elif name in TORCHAO_ROWS:
                    ladder.run_torchao(name)
                else:
                    ladder.run_engine(name, name in breakdown)
            except Exception as e:  # one failed row must not cost the rest of the run
                log(traceback.format_exc())
                ladder.add({"name": name, "failed": f"{type(e).__name__}: {str(e)[:1500]}"})
                release(ladder.device)
    for ladder in ladders.values():
        write_profile_summary(ladder, args.out)
    try:
        from chart import draw
        log(f"chart: {draw(args.out)}")
    except ImportError as e:  # matplotlib is not on every GPU image: `python bench/chart.py DIR` later
        log(f"no chart drawn here ({e})")
    log(f"done in {time.monotonic() - started:.0f} s")

if __name__ == "__main__":
    main()
