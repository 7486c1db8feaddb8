"""Bench-only WebUI extension (bench/webui_gpu/run.sh copies it into the WebUI it starts; never part of
the product): timings the API cannot give, read from inside the WebUI's process.

Routes (JSON):
- POST /bench/v1/reset: forget the recorded samplings and timers; reset torch's peak-memory counters.
- GET  /bench/v1/stats: each sampling since the reset (sampler calls = steps, seconds between a
  synchronize before and after: the WebUI's own sampling loop, no text encoder, no VAE), the peak
  GPU memory (torch.cuda.max_memory_allocated/reserved), and the per-call timers when on.
- POST /bench/v1/profile {"timers": bool, "torch_profiler": bool}: per-call timers (perf_counter around
  our hook's parts and the WebUI's CFG denoiser and callbacks, CUDA events around the engine: no
  synchronize inside a step); torch_profiler: the next sampling runs under torch.profiler and its
  table (self CUDA and CPU time per op) comes with the stats.
At start-up it also writes a ControlNet (BENCH_CONTROLNET=1) with sd-webui-controlnet's own model code,
at SD1.5 size (BENCH_TINY=1: at the tiny checkpoint's size), and registers the tiny OpenCLIP text tower
of make_checkpoints.py --tiny with open_clip (BENCH_TINY=1), before the WebUI loads a model.
"""
import math
import os
import sys
import threading
import time
from collections import defaultdict

import torch

from modules import paths, script_callbacks

CUDA = torch.cuda.is_available()
STATE = {"samplings": [], "timers": False, "torch_profiler": False, "profile_table": ""}
TIMERS = defaultdict(lambda: [0, 0.0])  # name -> [calls, seconds]
EVENTS = []  # (name, start event, end event), read after the sampling's synchronize
LOCAL = threading.local()
TINY_BIG_G_CONFIG = {"embed_dim": 1280,
                     "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 64, "patch_size": 14},
                     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1280, "heads": 20, "layers": 2}}
TINY_CONTROLNET = {"model_channels": 32, "num_heads": 8, "channel_mult": [1, 2, 4, 4], "attention_resolutions": [1, 2, 4],
                   "transformer_depth": [1, 1, 1, 0], "num_res_blocks": 2, "context_dim": 768}
TINY = os.environ.get("BENCH_TINY") == "1"

if TINY:
    import open_clip.factory
    open_clip.factory._MODEL_CONFIGS["tiny-bigG"] = dict(TINY_BIG_G_CONFIG)


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def timed(name: str, fn, events: bool = False):
    """fn with its CPU time (and, with events, its GPU time) added to TIMERS[name] while timers are on."""
    def wrapper(*args, **kwargs):
        if not STATE["timers"]:
            return fn(*args, **kwargs)
        start_event = end_event = None
        if events and CUDA:
            start_event, end_event = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start_event.record()
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            entry = TIMERS[name]
            entry[0] += 1
            entry[1] += time.perf_counter() - started
            if end_event is not None:
                end_event.record()
                EVENTS.append((name + " (GPU)", start_event, end_event))
    wrapper.__wrapped__ = fn
    return wrapper


def counted_denoiser(fn):
    def wrapper(*args, **kwargs):
        LOCAL.calls = getattr(LOCAL, "calls", 0) + 1
        return fn(*args, **kwargs)
    wrapper.__wrapped__ = fn
    return wrapper


def timed_sampling(kind: str, fn):
    """The sampling loop between two synchronizes; sampler calls counted as steps."""
    def wrapper(*args, **kwargs):
        sync()
        LOCAL.calls = 0
        profiler = None
        if STATE["torch_profiler"]:
            STATE["torch_profiler"] = False
            activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if CUDA else [])
            profiler = torch.profiler.profile(activities=activities)
            profiler.__enter__()
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            sync()
            seconds = time.perf_counter() - started
            if profiler is not None:
                profiler.__exit__(None, None, None)
                sort = "self_cuda_time_total" if CUDA else "self_cpu_time_total"
                STATE["profile_table"] = profiler.key_averages().table(sort_by=sort, row_limit=40, max_name_column_width=70)
            STATE["samplings"].append({"kind": kind, "steps": LOCAL.calls, "seconds": seconds})
    wrapper.__wrapped__ = fn
    return wrapper


def module_ending(suffix: str):
    return next((m for name, m in list(sys.modules.items()) if name.endswith(suffix) and m is not None), None)


def patch(owner, name: str, make) -> None:
    current = getattr(owner, name)
    if not hasattr(current, "__wrapped__"):
        setattr(owner, name, make(current))


def install_wrappers() -> None:
    from modules import sd_samplers_cfg_denoiser, sd_samplers_kdiffusion, sd_samplers_timesteps

    for sampler in (sd_samplers_kdiffusion.KDiffusionSampler, sd_samplers_timesteps.CompVisSampler):
        patch(sampler, "sample", lambda fn: timed_sampling("txt2img", fn))
        patch(sampler, "sample_img2img", lambda fn: timed_sampling("img2img", fn))
    denoiser = sd_samplers_cfg_denoiser.CFGDenoiser
    patch(denoiser, "forward", lambda fn: counted_denoiser(timed("CFG denoiser step (CPU)", fn, events=True)))
    for callback in ("cfg_denoiser_callback", "cfg_denoised_callback", "cfg_after_cfg_callback"):
        patch(script_callbacks, callback, lambda fn: timed("WebUI callbacks (CPU)", fn))
        # the denoiser module imported these names itself
        if hasattr(sd_samplers_cfg_denoiser, callback):
            setattr(sd_samplers_cfg_denoiser, callback, getattr(script_callbacks, callback))
    hook, router = module_ending("trt_unet_webui.hook"), module_ending("trt_core.router")
    if hook is None or router is None:
        print("[bench-helper] the extension's hook or router is not loaded: no hook timers", flush=True)
        return
    patch(hook.TrtUnet, "forward", lambda fn: timed("hook forward, all (CPU)", fn))
    patch(hook.TrtUnet, "prepare", lambda fn: timed("hook prepare: live weights, plan key (CPU)", fn))
    patch(hook.TrtUnet, "run_builtin", lambda fn: timed("built-in UNet placement (CPU)", fn))
    patch(router.Router, "plan", lambda fn: timed("router plan (CPU)", fn))
    patch(router.Router, "_checkout", lambda fn: timed("router checkout/lock (CPU)", fn))
    patch(router.Router, "_release", lambda fn: timed("router checkout/lock (CPU)", fn))
    current = router.Router.__dict__["_run_chunks"]
    if not hasattr(current.__func__, "__wrapped__"):
        router.Router._run_chunks = staticmethod(timed("engine call", current.__func__, events=True))


def stats() -> dict:
    sync()
    timers = {name: {"calls": calls, "seconds": seconds} for name, (calls, seconds) in TIMERS.items()}
    for name, start, end in EVENTS:
        entry = timers.setdefault(name, {"calls": 0, "seconds": 0.0})
        entry["calls"] += 1
        entry["seconds"] += start.elapsed_time(end) / 1000
    EVENTS.clear()
    memory = {}
    if CUDA:
        memory = {"max_allocated_bytes": torch.cuda.max_memory_allocated(),
                  "max_reserved_bytes": torch.cuda.max_memory_reserved(),
                  "allocated_bytes": torch.cuda.memory_allocated()}
    return {"samplings": STATE["samplings"], "memory": memory, "timers": timers,
            "torch_profile": STATE["profile_table"], "device": torch.cuda.get_device_name(0) if CUDA else "cpu"}


def reset() -> dict:
    STATE["samplings"], STATE["profile_table"] = [], ""
    TIMERS.clear()
    EVENTS.clear()
    if CUDA:
        sync()
        torch.cuda.reset_peak_memory_stats()
    return {"ok": True}


def make_controlnet() -> None:
    """models/ControlNet/bench_control_sd15.safetensors by sd-webui-controlnet's own model code,
    random weights, none zero (its zero convolutions would make the residuals vanish)."""
    from safetensors.torch import save_file

    cldm, guess = module_ending("scripts.cldm"), module_ending("controlnet_model_guess")
    if cldm is None or guess is None:
        print("[bench-helper] sd-webui-controlnet is not loaded: no ControlNet written", flush=True)
        return
    if TINY:
        guess.controlnet_default_config.update(TINY_CONTROLNET)
    folder = os.path.join(paths.models_path, "ControlNet")
    path = os.path.join(folder, "bench_control_sd15.safetensors")
    if os.path.exists(path):
        return
    os.makedirs(folder, exist_ok=True)
    config = dict(guess.controlnet_default_config, hint_channels=3, use_fp16=False)
    config.pop("global_average_pooling", None)
    device = torch.device("cuda" if CUDA else "cpu")
    started = time.time()
    with torch.device(device):
        model = cldm.ControlNet(**config)
    generator = torch.Generator(device).manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 1 / math.sqrt(p[0].numel()), generator=generator)
            else:
                p.normal_(1.0 if "norm" in name else 0.0, 0.05, generator=generator)
    save_file({f"control_model.{k}": v.to(torch.float16).contiguous().cpu() for k, v in model.state_dict().items()}, path)
    print(f"[bench-helper] wrote {path} ({sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, "
          f"{time.time() - started:.0f} s)", flush=True)


def on_app_started(_demo, app) -> None:
    from fastapi import Body

    install_wrappers()
    if os.environ.get("BENCH_CONTROLNET") == "1":
        make_controlnet()

    def set_profile(body: dict = Body(...)) -> dict:
        STATE["timers"] = bool(body.get("timers", STATE["timers"]))
        STATE["torch_profiler"] = bool(body.get("torch_profiler", False))
        return {"timers": STATE["timers"], "torch_profiler": STATE["torch_profiler"]}

    app.add_api_route("/bench/v1/reset", reset, methods=["POST"])
    app.add_api_route("/bench/v1/stats", stats, methods=["GET"])
    app.add_api_route("/bench/v1/profile", set_profile, methods=["POST"])
    print("[bench-helper] routes /bench/v1/{reset,stats,profile} ready", flush=True)


script_callbacks.on_app_started(on_app_started)
