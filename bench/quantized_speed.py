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

from measure import Footprint, environment, log, rel_error, release, sync, time_steps
from steps import compiled_step, eager_step, kernel_breakdown, router_step
from workloads import WORKLOADS, make_inputs, make_unet

from sd_unet_trt.trt_core.backends.base import BuildRequest  # noqa: E402
from sd_unet_trt.trt_core.backends.torch_compiled import TorchCompiledBackend  # noqa: E402
from sd_unet_trt.trt_core.backends.torch_compiled.quantized import LAYER_SETS  # noqa: E402
from sd_unet_trt.trt_core.profiles import Profile  # noqa: E402
from sd_unet_trt.models.vae import decode, seeded_decoder  # noqa: E402
from sd_unet_trt.trt_core.quality import conditionings, denoise, psnr_db  # noqa: E402

# row name -> (precision, build options)
ENGINE_ROWS: dict[str, tuple[str, dict[str, Any]]] = {
    "fp32": ("fp32", {}), "fp16": ("fp16", {}), "bf16": ("bf16", {}),
    "int8": ("int8", {}), "fp8": ("fp8", {}),
    **{f"{p}_{layers}": (p, {"quantize_layers": layers}) for p in ("int8", "fp8") for layers in LAYER_SETS
       if layers != "transformer"},
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
        backend = TorchCompiledBackend()
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
        if breakdown and self.device.type == "cuda":
            plain = TorchCompiledBackend().load(path, "plain", self.work.family, profile, device=self.device.type,
                                                cuda_graphs=False)
            row["breakdown"] = kernel_breakdown(lambda inputs: plain(*inputs), self.timing[0], self.device)
            plain.close()
        return row

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
DEFAULT_PLAN = ("sd15:eager_fp16,fp16,int8,fp8;sdxl:eager_fp16,fp16,int8,fp8;"
                "sd15:fp8_feed_forward,int8_feed_forward,bf16,fp32;sdxl:fp8_feed_forward,int8_feed_forward,bf16,fp32;"
                "sd15:torchao_int8,torchao_fp8;sdxl:torchao_int8,torchao_fp8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", default=DEFAULT_PLAN,
                        help="model:row,row;model:row,... in the order to run (rows: eager_fp16, "
                             f"{', '.join(ENGINE_ROWS)}, {', '.join(TORCHAO_ROWS)})")
    parser.add_argument("--breakdown", default="fp16,fp8,int8", help="engine rows profiled kernel by kernel")
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
    for part in args.plan.split(";"):
        key, _, names = part.partition(":")
        if key not in ladders:
            ladders[key] = Ladder(key, torch.device(args.device), args.out, args.engines, args.seconds)
            ladders[key].prepare()
        ladder = ladders[key]
        for name in names.split(","):
            if time.monotonic() - started + ROW_NEEDS_S[key] > args.budget_s:
                ladder.add({"name": name, "skipped": "the run's time budget was spent"})
                continue
            try:
                if name == "eager_fp16":
                    ladder.run_eager()
                elif name in TORCHAO_ROWS:
                    ladder.run_torchao(name)
                else:
                    ladder.run_engine(name, name in breakdown)
            except Exception as e:  # one failed row must not cost the rest of the run
                log(traceback.format_exc())
                ladder.add({"name": name, "failed": f"{type(e).__name__}: {str(e)[:1500]}"})
                release(ladder.device)
    try:
        from chart import draw
        log(f"chart: {draw(args.out)}")
    except ImportError as e:  # matplotlib is not on every GPU image: `python bench/chart.py DIR` later
        log(f"no chart drawn here ({e})")
    log(f"done in {time.monotonic() - started:.0f} s")

if __name__ == "__main__":
    main()
