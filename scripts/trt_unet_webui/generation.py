"""The generation in progress, as the UNet hook sees it: begun by the always-visible script's
process() (before the WebUI applies the UNet option), ended by its postprocess()."""
from __future__ import annotations

from sd_unet_trt.trt_core.hook_policy import GenerationReport

_report = GenerationReport()
_end_hooks: list = []  # called when a generation ends (release fallback weights)


def begin() -> GenerationReport:
    global _report
    end()
    _report = GenerationReport()
    return _report


def current() -> GenerationReport:
    return _report


def on_end(hook) -> None:
    if hook not in _end_hooks:
        _end_hooks.append(hook)


def forget(hook) -> None:
    if hook in _end_hooks:
        _end_hooks.remove(hook)


def end() -> None:
    for hook in list(_end_hooks):
        hook()
