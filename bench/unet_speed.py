"""UNet step benchmark: every way of running the UNet, on the same work, held to the same numbers.

    python bench/unet_speed.py --models sd15,sdxl --out DIR            # on an NVIDIA GPU
    python bench/unet_speed.py --models tiny --device cpu --out DIR    # smoke run of the same code

One step = one UNet call of batch 2 (one image with CFG: cond + uncond rows). Random weights in the
real architectures (models/unet.py; parameter counts match SD1.5 and SDXL). Each row is checked
against an fp32 reference of the same weights on fresh inputs before it is timed (outputs poisoned
with NaN first, so an element nobody wrote fails the check), then timed with CUDA events around
each step, host launch included (the stream is idle when a step starts), median of many repeats,
two blocks so the spread is visible. Results go to DIR/<model>.json as each row finishes.
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from measure import (Checks, Footprint, Step, environment, log, matmul_ceiling, release, sync,
                     time_steps)
from steps import compiled_step, eager_step, graph_step, kernel_breakdown, router_step
from variants import VARIANTS, Variant, profile_for
from workloads import WORKLOADS, flop_count, make_inputs, make_unet

from sd_unet_trt.trt_core.backends.base import BuildRequest  # noqa: E402
from sd_unet_trt.trt_core.backends import get_backend  # noqa: E402


class Bench:
    def __init__(self, work_key: str, device: torch.device, out_dir: Path, artifacts: Path, deadline: float,
                 seconds: float):
        self.key, self.work, self.device = work_key, WORKLOADS[work_key], device
        self.out_path = out_dir / f"{work_key}.json"
        self.artifacts, self.deadline, self.seconds = artifacts, deadline, seconds
        self.dtype = torch.float16 if device.type == "cuda" else torch.float32
        self.precision = "fp16" if device.type == "cuda" else "fp32"
        self.result: dict[str, Any] = {"workload": self.work.name, "model": work_key, "rows_per_step": self.work.rows,
                                       "precision": self.precision, "env": environment(device), "rows": []}
        self.builds: dict[str, tuple[Path, float, dict[str, Any]]] = {}  # build key -> (file, seconds, details)

    def save(self) -> None:
        self.out_path.write_text(json.dumps(self.result, indent=1))

    def add_row(self, row: dict[str, Any]) -> None:
        eager = next((r for r in self.result["rows"] if r["name"] == "eager" and "median_ms" in r), None)
        if "median_ms" in row:
            row["tflops"] = self.result["flops"] / (row["median_ms"] / 1e3) / 1e12
            if eager:
                row["speedup"] = eager["median_ms"] / row["median_ms"]
        self.result["rows"].append(row)
        self.save()
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                 if k not in ("breakdown", "build_details")}
        log(f"row {shown}")

    def out_of_time(self, name: str, needs: float) -> bool:
        if time.monotonic() + needs > self.deadline:
            self.add_row({"name": name, "skipped": f"not enough time left in this run (needs ~{needs:.0f} s)"})
            return True
        return False

    def prepare(self, checks: int = 3, timing_sets: int = 3) -> None:
        self.result["flops"] = flop_count(self.work)
        self.result["matmul_ceiling_tflops"] = matmul_ceiling(self.device)
        log(f"{self.work.name}: {self.result['flops'] / 1e12:.3f} TFLOP per step")
        t0 = time.monotonic()
        master = make_unet(self.work.family, self.device)
        self.result["parameters"] = sum(p.numel() for p in master.parameters())
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
        gen = torch.Generator(self.device).manual_seed(1234)
        check_inputs = [make_inputs(self.work, self.device, torch.float32, gen) for _ in range(checks)]
        with torch.inference_mode():
            refs = [master(*inputs).double() for inputs in check_inputs]
        self.checks = Checks([tuple(t.to(self.dtype) if t.is_floating_point() and i != 1 else t
                                    for i, t in enumerate(inputs)) for inputs in check_inputs], refs)
        self.timing_inputs = [make_inputs(self.work, self.device, self.dtype, gen) for _ in range(timing_sets)]
        self.unet = master.to(self.dtype) if self.dtype != torch.float32 else master
        del master
        release(self.device)
        log(f"weights and references ready in {time.monotonic() - t0:.1f} s")

    def measure(self, name: str, step: Step, extra: dict[str, Any], memory: Footprint) -> dict[str, Any]:
        err = self.checks.worst(step, self.device)
        row = {"name": name, "rel_err": err, **extra}
        if not err <= 1e-2:
            row["failed"] = f"relative error {err:.3g} against fp32 is above 1e-2; not timed"
            return row
        memory.reset_peak()  # drop the poison blocks the checks left in the allocator's cache
        row.update(time_steps(step, self.timing_inputs, self.device, min_repeats=20, seconds=self.seconds))
        row["vram_mib"] = memory.mib()
        return row

    def eager_footprint(self) -> Footprint:
        memory = Footprint(self.device, owned=sum(p.numel() * p.element_size() for p in self.unet.parameters()))
        memory.start()
        return memory

    def run_eager(self) -> None:
        base = self.eager_footprint()  # the row owns the fp16 weights
        self.add_row(self.measure("eager", eager_step(self.unet), {"label": f"PyTorch eager {self.precision}, SDPA"}, base))

    def run_eager_graph(self) -> None:
        base = self.eager_footprint()
        t0 = time.monotonic()
        step = graph_step(self.unet, self.timing_inputs[0], self.device)
        self.add_row(self.measure("eager_graph", step, {"label": "eager, replayed as one CUDA graph",
                                                        "build_s": time.monotonic() - t0}, base))
        del step
        release(self.device)

    def run_compile(self) -> None:
        if self.out_of_time("compile_ro", 150):
            return
        base = self.eager_footprint()
        torch._dynamo.reset()
        t0 = time.monotonic()
        step = compiled_step(self.unet)
        for _ in range(3):  # compile, record, capture
            step(self.timing_inputs[0])
        sync(self.device)
        build = time.monotonic() - t0
        self.add_row(self.measure("compile_ro", step, {"label": "torch.compile mode=reduce-overhead",
                                                       "build_s": build}, base))
        del step
        torch._dynamo.reset()
        release(self.device)

    def build(self, variant: Variant, name: str) -> tuple[Path, float, dict[str, Any]]:
        """The variant's engine file, built once per distinct set of build options."""
        key = variant.build_key()
        if key not in self.builds:
            backend = get_backend("torch")
            path = self.artifacts / f"{self.key}-{name}{backend.file_suffix}"
            request = BuildRequest(Path("unused.onnx"), self.work.family, profile_for(self.work, "static"),
                                   self.precision, module=self.unet, device=self.device.type, options=variant.build)
            log(f"building torch[{name}] ({variant.build or 'defaults'})")
            t0 = time.monotonic()
            outcome = backend.build(request, path, progress=lambda phase, f: log(f"  {phase}"))
            self.builds[key] = (path, time.monotonic() - t0, outcome.details)
            log(f"  SDPA kernels compiled: {outcome.details.get('attention')}")
            release(self.device)
        return self.builds[key]

    def drop_build(self, variant: Variant) -> None:
        path = self.builds.pop(variant.build_key(), (None,))[0]
        if path is not None:
            path.unlink(missing_ok=True)

    def run_backend(self, name: str, with_router: bool, breakdown: bool) -> None:
        variant = VARIANTS[name]
        built = variant.build_key() in self.builds
        needs = 40 if built else variant.build_budget_s[self.key]
        if self.out_of_time(f"torch[{name}]", needs):
            return
        path, build_s, details = self.build(variant, name)
        backend = get_backend("torch")
        profile = profile_for(self.work, "static")
        base = Footprint(self.device)
        base.start()
        t0 = time.monotonic()
        engine = backend.load(path, f"{self.key}-{name}", self.work.family, profile, device=self.device.type)
        load_s = time.monotonic() - t0
        settings = variant.build or "backend defaults"
        extra = {"label": f"torch backend ({name}: {settings})", "build_s": build_s, "build_reused": built,
                 "load_s": load_s, "file_mib": path.stat().st_size / 2**20, "build_details": details,
                 "build_options": variant.build}
        row = self.measure(f"torch[{name}]", lambda inputs: engine(*inputs), extra, base)
        if breakdown and "median_ms" in row and self.device.type == "cuda":
            plain = backend.load(path, "plain", self.work.family, profile, device=self.device.type, cuda_graphs=False)
            row["breakdown"] = kernel_breakdown(lambda inputs: plain(*inputs), self.timing_inputs[0], self.device)
            plain.close()
            del plain
        self.add_row(row)
        if with_router and "median_ms" in row:
            self.run_router(engine, name, base, row["median_ms"])
        engine.close()
        release(self.device)

    def summary(self) -> list[str]:
        lines = []
        for row in self.result["rows"]:
            if "median_ms" in row:
                lines.append(f"{self.key:5} {row['name']:28} {row['median_ms']:7.2f} ms  err {row['rel_err']:.1e}  "
                             f"build {fmt_s(row.get('build_s'))}  load {fmt_s(row.get('load_s'))}")
            else:
                lines.append(f"{self.key:5} {row['name']:28} {(row.get('failed') or row.get('skipped', ''))[:150]}")
        return lines

    def run_router(self, engine, variant: str, base: Footprint, direct_ms: float) -> None:
        row = self.measure(f"router[{variant}]", router_step(engine),
                           {"label": f"torch backend ({variant}) through trt_core.router.Router"}, base)
        if "median_ms" in row:
            row["router_overhead"] = row["median_ms"] / direct_ms - 1
        self.add_row(row)


def fmt_s(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sd15,sdxl")
    parser.add_argument("--rows", default="eager,eager_graph,compile_ro,torch")
    parser.add_argument("--variants", default="default", help=f"backend builds to time: {', '.join(VARIANTS)}")
    parser.add_argument("--router-variants", default=None,
                        help="variants also timed through the router, comma-separated (default: the first); "
                             "the first of them is also profiled kernel by kernel")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latest"))
    parser.add_argument("--artifacts", type=Path, default=None, help="where engines are built (default: OUT/engines)")
    parser.add_argument("--budget-s", type=float, default=560, help="stop starting rows after this many seconds")
    parser.add_argument("--seconds", type=float, default=3.0, help="timing seconds per row")
    args = parser.parse_args()

    started = time.monotonic()
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    artifacts = args.artifacts or args.out / "engines"
    artifacts.mkdir(parents=True, exist_ok=True)
    rows = args.rows.split(",")
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {', '.join(sorted(unknown))} (known: {', '.join(VARIANTS)})")
    router_variants = args.router_variants.split(",") if args.router_variants else variants[:1]
    summary: list[str] = []
    for key in args.models.split(","):
        bench = Bench(key, device, args.out, artifacts, started + args.budget_s, args.seconds)
        bench.prepare()
        if "eager" in rows:
            bench.run_eager()
        if "eager_graph" in rows and device.type == "cuda":
            bench.run_eager_graph()
        if "compile_ro" in rows and device.type == "cuda":
            bench.run_compile()
        if "torch" in rows:
            for i, variant in enumerate(variants):
                try:
                    bench.run_backend(variant, with_router=variant in router_variants,
                                      breakdown=variant == router_variants[0])
                except Exception as e:  # one failed build must not cost the rest of the run
                    log(traceback.format_exc())
                    bench.add_row({"name": f"torch[{variant}]", "failed": f"{type(e).__name__}: {str(e)[:2000]}"})
                    release(device)
                if all(VARIANTS[v].build_key() != VARIANTS[variant].build_key() for v in variants[i + 1:]):
                    bench.drop_build(VARIANTS[variant])
        summary += bench.summary()
        del bench
        release(device)
    log(f"done in {time.monotonic() - started:.0f} s")
    print("\n".join(summary), flush=True)


if __name__ == "__main__":
    main()
