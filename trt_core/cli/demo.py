"""The demo: export the tiny UNet, build it with every backend here, denoise through the router,
and compare speed and result with PyTorch."""
from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from sd_unet_trt.trt_core.backends import REGISTRY, all_backends
from sd_unet_trt.trt_core.catalog import router_for_checkpoint
from sd_unet_trt.trt_core.cli.commands import progress_bar, tiny_model
from sd_unet_trt.trt_core.cli.errors import CliError
from sd_unet_trt.trt_core.export import sample_inputs
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import presets_for
from sd_unet_trt.trt_core.router import Router
from sd_unet_trt.trt_core.sampling import sample_euler_cfg
from sd_unet_trt.trt_core.verify import TOLERANCE
from sd_unet_trt.trt_core.workspace import Workspace

RUNS = 3  # timed runs per row; the median is shown (one run can be far off on a busy machine)


@torch.inference_mode()
def time_sampling(unet_fn, noise, cond, uncond, steps, sync) -> tuple[torch.Tensor, float]:
    """The latents, and the median milliseconds per step over RUNS runs after a warm-up."""
    sample_euler_cfg(unet_fn, noise, cond, uncond, 1)  # warm-up: first-call allocations, graph capture
    times = []
    for _ in range(RUNS):
        sync()
        started = time.perf_counter()
        latents = sample_euler_cfg(unet_fn, noise, cond, uncond, steps)
        sync()
        times.append((time.perf_counter() - started) / steps * 1000)
    return latents, statistics.median(times)


def demo_backends(names: str | None, device: str) -> tuple[list, list[tuple[str, str]]]:
    """The backends the demo builds, and (name, reason) for those it leaves out."""
    wanted = None if names is None else {n.strip() for n in names.split(",") if n.strip()}
    unknown = sorted((wanted or set()) - set(REGISTRY))
    if unknown or wanted == set():
        raise CliError(f"--backends takes names of {', '.join(REGISTRY)}; got {names!r}")
    chosen, skipped = [], []
    for backend in all_backends():
        if wanted is not None and backend.name not in wanted:
            continue
        status = backend.availability()
        if not status.available:
            skipped.append((backend.name, status.reason))
        elif wanted is None and device == "cpu" and backend.slow_on_cpu:
            skipped.append((backend.name, f"left out on the CPU (compiling takes minutes); --backends {backend.name} "
                                          f"includes it"))
        else:
            chosen.append(backend)
    return chosen, skipped


def sample_through(router: Router, noise, cond, uncond, steps: int, sync, reference) -> tuple[float, float]:
    """ms per step through the router, and the final latents' relative error against `reference`."""
    def through_router(x, t, c):
        result = router.run(x, t, c)
        if not result.covered:
            raise CliError(f"demo call not covered: {result.reason}")
        return result.output
    try:
        latents, ms = time_sampling(through_router, noise, cond, uncond, steps, sync)
    finally:
        router.close()
    return ms, float((latents.double() - reference.double()).norm() / reference.double().norm())


def triton_row(url: str, sha256: str, noise, cond, uncond, steps: int, sync, reference) -> tuple:
    """The same sampling through a Triton server serving this model (export-triton's repository)."""
    from sd_unet_trt.trt_core.serving.remote import remote_records
    from sd_unet_trt.trt_core.serving.repository import model_name

    name = f"triton {url}"
    try:
        router = Router(remote_records(url, model_name(sha256)))
        ms, rel = sample_through(router, noise, cond, uncond, steps, sync, reference)
    except Exception as e:  # a server that is down or does not serve this model is a row, not the end
        return (name, "-", "-", "-", f"not served: {type(e).__name__}: {str(e)[:200]}")
    return (name, "-", f"{ms:.2f}", f"{rel:.2e}", f"model {model_name(sha256)}")


def cmd_demo(args) -> int:
    """Export the tiny UNet, build it with every backend here, denoise through the router, compare."""
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="sd-unet-trt-demo-"))
    try:
        return run_demo(args, Workspace(root), kept=bool(args.dir))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


def run_demo(args, workspace: Workspace, kept: bool) -> int:
    device = args.device
    backends, skipped = demo_backends(args.backends, device)
    source = tiny_model()
    unet, checkpoint, family = source.module.to(device), source.checkpoint, source.family
    precision = "fp32" if device == "cpu" else "fp16"
    dtype = torch.float32 if precision == "fp32" else torch.float16
    generator = torch.Generator().manual_seed(args.seed)
    noise, _, cond = sample_inputs(family, 1, 8, 8, 77, dtype, device, generator)
    uncond = torch.randn(cond.shape, generator=generator).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    reference, ref_ms = time_sampling(unet.to(dtype), noise, cond, uncond, args.steps, sync)
    rows = [("pytorch (eager)", "-", f"{ref_ms:.2f}", "0 (reference)", "")]
    rows += [(name, "-", "-", "-", reason) for name, reason in skipped]
    for backend in backends:
        # the first preset (the default first) this backend can build
        profile = next(p.profile for p in presets_for(family) if backend.profile_problem(p.profile) is None)
        update, bar = progress_bar(f"build {backend.name}")
        try:
            entry = build_engine(source, profile, backend, workspace, precision=precision, device=device,
                                 progress=update)
        except Exception as e:  # one backend's failure is a row of the table, not the end of the demo
            logging.getLogger(__name__).debug("build with %s failed", backend.name, exc_info=True)
            rows.append((backend.name, "-", "-", "-", f"build failed: {e}"))
            continue
        finally:
            bar.close()
        cannot_run = backend.can_run(device)
        if cannot_run:  # TensorRT for RTX builds real engines without a GPU, for the GPUs it serves
            rows.append((backend.name, f"{entry.build_seconds:.1f}", "-", "-", f"built; not run: {cannot_run}"))
            continue
        router, _ = router_for_checkpoint(workspace, checkpoint.sha256, device)
        router.records = [r for r in router.records if r.id == entry.id]
        ms, rel = sample_through(router, noise, cond, uncond, args.steps, sync, reference)
        rows.append((backend.name, f"{entry.build_seconds:.1f}", f"{ms:.2f}", f"{rel:.2e}", ""))
    if args.triton:
        rows.append(triton_row(args.triton, checkpoint.sha256, noise, cond, uncond, args.steps, sync, reference))
    print(f"\ndemo: tiny UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M parameters), "
          f"{args.steps} Euler steps with CFG at 64x64 px on {device}, {precision}"
          + (f"; engines kept in {workspace.engine_dir}" if kept else ""))
    header = ("backend", "build s", "ms/step", "rel. error vs PyTorch", "note")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    for row in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    print(f"\nbuild s: export, checks and build. ms/step: median of {RUNS} runs of {args.steps} steps, one UNet call "
          f"of 2 rows per step. rel. error: |latents - PyTorch's| / |PyTorch's| after the last step; the builds "
          f"allow {TOLERANCE[precision]:.0e} per call in {precision}, and below that is good.")
    return 0
