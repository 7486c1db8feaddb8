"""modules/script_callbacks.py (v1.10.1): the callbacks the extension registers, called with the
real arguments; a callback's exception is reported and the next one runs, as in the real loop."""
from __future__ import annotations

import dataclasses
import inspect
import os

from modules import errors


@dataclasses.dataclass
class ScriptCallback:
    script: str
    callback: any
    name: str = "unnamed"


class CFGDenoiserParams:
    def __init__(self, x, image_cond, sigma, sampling_step, total_sampling_steps, text_cond, text_uncond, denoiser=None):
        self.x = x
        self.image_cond = image_cond
        self.sigma = sigma
        self.sampling_step = sampling_step
        self.total_sampling_steps = total_sampling_steps
        self.text_cond = text_cond
        self.text_uncond = text_uncond
        self.denoiser = denoiser


callback_map = dict(
    callbacks_app_started=[], callbacks_model_loaded=[], callbacks_ui_tabs=[], callbacks_ui_settings=[],
    callbacks_script_unloaded=[], callbacks_list_unets=[], callbacks_cfg_denoiser=[],
)


def add_callback(callbacks, fun, *, name=None, category='unknown', filename=None):
    if filename is None:
        stack = [x for x in inspect.stack() if x.filename != __file__]
        filename = stack[0].filename if stack else 'unknown file'
    if not callable(fun):
        raise TypeError(f"callback for {category} is not callable: {fun!r}")
    callbacks.append(ScriptCallback(filename, fun, f"{os.path.basename(filename)}/{category}/{name}"))


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def report_exception(c, job):
    errors.report(f"Error executing callback {job} for {c.script}", exc_info=True)


def app_started_callback(demo, app):
    for c in callback_map['callbacks_app_started']:
        try:
            c.callback(demo, app)
        except Exception:
            report_exception(c, 'app_started_callback')


def model_loaded_callback(sd_model):
    for c in callback_map['callbacks_model_loaded']:
        try:
            c.callback(sd_model)
        except Exception:
            report_exception(c, 'model_loaded_callback')


def ui_tabs_callback():
    res = []
    for c in callback_map['callbacks_ui_tabs']:
        try:
            res += c.callback() or []
        except Exception:
            report_exception(c, 'ui_tabs_callback')
    return res


def ui_settings_callback():
    for c in callback_map['callbacks_ui_settings']:
        try:
            c.callback()
        except Exception:
            report_exception(c, 'ui_settings_callback')


def script_unloaded_callback():
    for c in reversed(callback_map['callbacks_script_unloaded']):
        try:
            c.callback()
        except Exception:
            report_exception(c, 'script_unloaded')


def list_unets_callback():
    res = []
    for c in callback_map['callbacks_list_unets']:
        try:
            c.callback(res)
        except Exception:
            report_exception(c, 'list_unets')
    return res


def cfg_denoiser_callback(params: CFGDenoiserParams):
    for c in callback_map['callbacks_cfg_denoiser']:
        try:
            c.callback(params)
        except Exception:
            report_exception(c, 'cfg_denoiser_callback')


def on_cfg_denoiser(callback, *, name=None):
    add_callback(callback_map['callbacks_cfg_denoiser'], callback, name=name, category='cfg_denoiser')


def on_app_started(callback, *, name=None):
    add_callback(callback_map['callbacks_app_started'], callback, name=name, category='app_started')


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map['callbacks_model_loaded'], callback, name=name, category='model_loaded')


def on_ui_tabs(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_tabs'], callback, name=name, category='ui_tabs')


def on_ui_settings(callback, *, name=None):
    add_callback(callback_map['callbacks_ui_settings'], callback, name=name, category='ui_settings')


def on_script_unloaded(callback, *, name=None):
    add_callback(callback_map['callbacks_script_unloaded'], callback, name=name, category='script_unloaded')


def on_list_unets(callback, *, name=None):
    add_callback(callback_map['callbacks_list_unets'], callback, name=name, category='list_unets')


def remove_callbacks_for_function(callback_func):
    for callback_list in callback_map.values():
        for callback_to_remove in [cb for cb in callback_list if cb.callback == callback_func]:
            callback_list.remove(callback_to_remove)
