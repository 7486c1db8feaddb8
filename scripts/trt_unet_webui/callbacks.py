"""What scripts/trt_unet.py registers with the WebUI. Every callback logs its own failure and
returns: nothing here may stop the WebUI or a generation."""
from __future__ import annotations

import functools
import logging

from modules import sd_unet, shared

from sd_unet_trt.scripts.trt_unet_webui import controlnet_bridge, controlnet_served, generation, precheck, settings, unets
from sd_unet_trt.scripts.trt_unet_webui.hook import active_unet
from sd_unet_trt.trt_core.generation_report import pass_label
from sd_unet_trt.trt_core.hook_policy import INFOTEXT_KEY

log = logging.getLogger("sd_unet_trt")
WARNING_KEY = "TensorRT warning"


def guarded(what: str):
    def wrap(fn):
        @functools.wraps(fn)
        def safe(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except Exception:
                log.exception("TensorRT extension: %s failed (the WebUI goes on without it)", what)
                return None
        return safe
    return wrap


@guarded("listing engine UNets")
def list_unets(options: list) -> None:
    unets.list_unets(options)


@guarded("creating the TensorRT tab")
def ui_tabs():
    from sd_unet_trt.scripts.trt_unet_webui.source import model_source
    from sd_unet_trt.ui.tab import create_tab
    return [(create_tab(model_source()), "TensorRT", "sd_unet_trt")]


@guarded("registering settings")
def ui_settings() -> None:
    settings.register()


@guarded("clearing what killed builds left")
def sweep_leftovers() -> None:
    """At load: temp files of builds whose process is gone, in Unet-onnx/ and Unet-trt/."""
    from sd_unet_trt.scripts.trt_unet_webui.workspace import workspace
    swept = workspace().sweep()
    if swept:
        log.info("TensorRT: removed %d leftovers of killed builds", len(swept))


@guarded("taking the snapshot of the names the UNet's forward resolves")
def snapshot_forward_names() -> None:
    """At load, after the WebUI's own patching: what later passes compare with (forward_names.py)."""
    from sd_unet_trt.scripts.trt_unet_webui import forward_names
    forward_names.take_snapshot()


@guarded("reading the TensorRT library setting")
def choose_tensorrt_library() -> None:
    """At load, before any backend is made: the library serves the whole run (restart to change)."""
    from sd_unet_trt.trt_core.backends.tensorrt import library
    library.set_preference(settings.tensorrt_library())


@guarded("registering API routes")
def app_started(demo, app) -> None:
    from sd_unet_trt.scripts.trt_unet_webui import api
    api.register(app)


@guarded("releasing engines")
def release() -> None:
    """On script unload: give the engines and any fallback weights back."""
    generation.end()
    controlnet_served.release_engines()
    if active_unet() is not None:
        sd_unet.apply_unet("None")


@guarded("following a model change")
def model_loaded(sd_model) -> None:
    """Mid-generation this is a refiner (or a hires checkpoint) being loaded: the WebUI switched the
    engine UNet off for the load and, when the refiner's config differs, does not switch it on
    again; the UNet option applies to the refiner's steps too."""
    if not generation.in_progress():
        generation.end()
        return
    if shared.sd_model is sd_model:
        sd_unet.apply_unet()
    unet = active_unet()
    if unet is not None:
        unet.request_sync()


def current_pass(p, hires: bool) -> str:
    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    refiner = getattr(p, "refiner_checkpoint_info", None)
    on_refiner = info is not None and refiner is not None and info.filename == refiner.filename
    return pass_label(hires, info.name_for_extra if on_refiner else None)


def start_pass(p, hires: bool) -> None:
    generation.current().start_pass(current_pass(p, hires))
    unet = active_unet()
    if unet is not None:
        unet.request_sync()


@guarded("preparing the generation")
def before_generation(p) -> None:
    """Script.process: runs before the WebUI applies the UNet option for this generation."""
    report = generation.begin()
    p.extra_generation_params[INFOTEXT_KEY] = lambda **_: report.infotext()
    unets.refresh_if_changed()
    start_pass(p, hires=False)
    message = precheck.warn_if_uncovered(p)
    if message:
        p.extra_generation_params[WARNING_KEY] = message.removeprefix("TensorRT: ")  # API users see it too


@guarded("starting a pass")
def before_pass(p, hires: bool) -> None:
    """Script.process_batch and before_hr: the networks for this pass are active now."""
    start_pass(p, hires)


@guarded("following the sampler")
def sampler_step(params) -> None:
    """on_cfg_denoiser, every step: a new pass or a model that changed mid-pass (a refiner) is
    picked up before the step's UNet calls; a step no engine UNet sees is counted as such."""
    p = getattr(getattr(params, "denoiser", None), "p", None)
    report = generation.current()
    if p is not None:
        hires = bool(getattr(p, "is_hr_pass", False))
        if params.sampling_step == 0 or current_pass(p, hires) != report.current:
            start_pass(p, hires)
    if active_unet() is None and generation.in_progress():
        name = getattr(getattr(shared.sd_model, "sd_checkpoint_info", None), "name_for_extra", "?")
        report.record_builtin_step(f"no engine UNet for {name}")
    elif controlnet_bridge.attach(shared.sd_model):
        log.info("TensorRT: ControlNet's UNet forward now runs through the engines")


@guarded("finishing the generation")
def after_generation(p) -> None:
    text = generation.current().infotext()
    if text is not None:  # a plain value in the API's info, where the callable would be null
        p.extra_generation_params[INFOTEXT_KEY] = text
    generation.end()
