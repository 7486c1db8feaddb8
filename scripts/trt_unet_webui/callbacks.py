"""What scripts/trt_unet.py registers with the WebUI. Every callback logs its own failure and
returns: nothing here may stop the WebUI or a generation."""
from __future__ import annotations

import functools
import logging

from modules import sd_unet

from sd_unet_trt.trt_core.hook_policy import INFOTEXT_KEY
from sd_unet_trt.scripts.trt_unet_webui import generation, precheck, settings, unets
from sd_unet_trt.scripts.trt_unet_webui.hook import TrtUnet

log = logging.getLogger("sd_unet_trt")


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


@guarded("registering API routes")
def app_started(demo, app) -> None:
    from sd_unet_trt.scripts.trt_unet_webui import api
    api.register(app)


def active_unet() -> TrtUnet | None:
    current = sd_unet.current_unet
    return current if isinstance(current, TrtUnet) else None


@guarded("releasing engines")
def release() -> None:
    """On script unload: give the engines and any fallback weights back."""
    generation.end()
    if active_unet() is not None:
        sd_unet.apply_unet("None")


@guarded("releasing fallback weights after a model change")
def model_loaded(sd_model) -> None:
    generation.end()


@guarded("preparing the generation")
def before_generation(p) -> None:
    """Script.process: runs before the WebUI applies the UNet option for this generation."""
    report = generation.begin()
    p.extra_generation_params[INFOTEXT_KEY] = lambda **_: report.infotext()
    unets.refresh_if_changed()
    unet = active_unet()
    if unet is not None and unet.check_model():
        unet.refresh()
    precheck.warn_if_uncovered(p)


@guarded("finishing the generation")
def after_generation(p) -> None:
    generation.end()
