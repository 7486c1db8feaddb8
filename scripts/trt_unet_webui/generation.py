"""The generation in progress, as the UNet hook sees it: begun by the always-visible script's
process() (before the WebUI applies the UNet option), ended by its postprocess()."""
from __future__ import annotations

from sd_unet_trt.trt_core.generation_report import GenerationReport

_report = GenerationReport()
_active = [False]
_end_hooks: list = []  # called when a generation ends (release fallback weights)


def begin() -> GenerationReport:
    global _report
    end()
    _report = GenerationReport()
    _active[0] = True
    return _report


def current() -> GenerationReport:
    return _report


def in_progress() -> bool:
    return _active[0]


def on_end(hook) -> None:
    if hook not in _end_hooks:
        _end_hooks.append(hook)


def forget(hook) -> None:
    if hook in _end_hooks:
        _end_hooks.remove(hook)


def end() -> None:
    _active[0] = False
    for hook in list(_end_hooks):
        hook()
