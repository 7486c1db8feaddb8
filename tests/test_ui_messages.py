"""Every failure the tab can meet is a short message in the page, never a traceback.

The handlers are called as Gradio calls them (looked up by the button's elem_id in the Blocks'
dependency list), with the real tiny model, the real catalog and the real job runner."""
from __future__ import annotations

import errno
import sys
from pathlib import Path

import pytest

import sd_unet_trt.ui.tab as ui_tab
from sd_unet_trt.models.families import UnsupportedModelError
from sd_unet_trt.trt_core import backends, jobs
from sd_unet_trt.ui.form import profile_fields
from sd_unet_trt.ui.source import ModelSource, NoModelLoaded, run_directly
from sd_unet_trt.ui.standalone import tiny_model, tiny_source
from sd_unet_trt.ui.tab import create_tab

TINY_FIELDS = [1, 1, 2, 64, 64, 128, 64, 64, 128, 75, 75, 150]


def handler(tab, elem_id: str | None, event: str):
    """The function Gradio runs for `event` on the component with `elem_id` (None: the page's load)."""
    ids = [block_id for block_id, block in tab.blocks.items() if getattr(block, "elem_id", None) == elem_id]
    for dep, fn in zip(tab.dependencies, tab.fns):
        if dep["trigger"] == event and (elem_id is None or ids[0] in dep["targets"]):
            return fn.fn
    raise KeyError(f"no {event} handler on #{elem_id}")


def value(update):
    return update.get("value") if isinstance(update, dict) else update


def run_export(tab, fields, backend="onnxruntime", precision="fp32", controlnet=False, controlnet_model="None"):
    return [[value(v) for v in step]
            for step in handler(tab, "trt_export", "click")(*fields, backend, precision, controlnet, controlnet_model)]


def no_model() -> ModelSource:
    def current():
        raise NoModelLoaded("no checkpoint is loaded; pick one in the checkpoint list at the top")
    return ModelSource(tiny_source(Path("."), "cpu").workspace, current, "cpu", run_directly)


def test_no_model_loaded(tmp_path):
    source = no_model()
    source.workspace = tiny_source(tmp_path, "cpu").workspace
    tab = create_tab(source)
    loaded = handler(tab, None, "load")()
    assert "no checkpoint is loaded" in value(loaded[0]) and "trt-msg-warn" in value(loaded[0])
    steps = run_export(tab, TINY_FIELDS)
    assert len(steps) == 1 and "no checkpoint is loaded" in steps[0][0]


def test_unsupported_family_from_the_host(tmp_path):
    def current():
        raise UnsupportedModelError("not supported: SD3 checkpoints do not go through the UNet hook")
    tab = create_tab(ModelSource(tiny_source(tmp_path, "cpu").workspace, current, "cpu", run_directly))
    line = handler(tab, "trt_reload_model", "click")()[0]
    assert "not supported: SD3" in value(line) and "Traceback" not in value(line)
    assert "not supported: SD3" in run_export(tab, TINY_FIELDS)[0][0]


def test_validation_messages_next_to_the_fields_and_on_export(tmp_path):
    tab = create_tab(tiny_source(tmp_path, "cpu"))
    bad = list(TINY_FIELDS)
    bad[4] = 70
    shown = handler(tab, "trt_height_opt", "input")(*bad, "onnxruntime", "fp32")
    assert "multiples of 8" in shown[1] and shown[0] == shown[2] == shown[3] == "" and shown[4] == ""
    good = handler(tab, "trt_height_opt", "input")(*TINY_FIELDS, "onnxruntime", "fp32")
    assert good[:4] == [""] * 4 and "Estimate: disk" in good[4]
    steps = run_export(tab, bad)
    assert len(steps) == 1 and "fix the profile first: Height:" in steps[0][0]


def test_missing_backend(tmp_path, monkeypatch):
    for module in ("tensorrt", "tensorrt_bindings", "tensorrt_rtx", "tensorrt_rtx_bindings"):
        monkeypatch.setitem(sys.modules, module, None)  # no TensorRT library imports
    monkeypatch.setattr(backends, "_instances", {})  # the process's TensorRT instance chose its library already
    tab = create_tab(tiny_source(tmp_path, "cpu"))
    assert "tensorrt" not in {b.name for b in ui_tab.backend_choices() if b.available}
    steps = run_export(tab, TINY_FIELDS, backend="tensorrt")
    assert "backend tensorrt is not available here" in steps[0][0] and "pip install" in steps[0][0]


def test_a_profile_the_backend_cannot_build_is_refused_before_building(tmp_path):
    tab = create_tab(tiny_source(tmp_path, "cpu"))
    steps = run_export(tab, TINY_FIELDS, backend="torch")
    assert len(steps) == 1 and "one size per engine" in steps[0][0]
    assert jobs.current() is None and not (tmp_path / "Unet-onnx").exists()


def test_disk_full_during_the_build(tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "Unet-trt" / "x.ort.onnx"))
    monkeypatch.setattr(ui_tab, "build_engine", full_disk)
    monkeypatch.setattr(ui_tab, "POLL_S", 0.01)
    tab = create_tab(tiny_source(tmp_path, "cpu"))
    steps = run_export(tab, TINY_FIELDS)
    progress, result = steps[-1][1], steps[-1][2]
    assert 'data-state="failed"' in progress and "disk full while writing" in progress and "x.ort.onnx" in progress
    assert "disk full" in result and "Traceback" not in progress + result
    assert jobs.current() is None


def test_delete_needs_a_choice_and_confirmation(tmp_path):
    tab = create_tab(tiny_source(tmp_path, "cpu"))
    row, text, note = handler(tab, "trt_delete", "click")(None)
    assert row["visible"] is False and "choose an engine" in note
    row, text, note = handler(tab, "trt_delete", "click")("gone-engine")
    assert "no longer in the manifest" in note
    outputs = handler(tab, "trt_confirm_delete", "click")("gone-engine")
    assert "gone-engine is no longer in the manifest" in value(outputs[3])


def test_preset_fills_the_fields(tmp_path):
    tab = create_tab(tiny_source(tmp_path, "cpu"))
    presets = ui_tab.presets(tiny_model().family)
    out = handler(tab, "trt_preset", "select")(presets[1].name, "onnxruntime", "fp32")
    assert out[:12] == profile_fields(presets[1].profile) and "Estimate" in out[16]


def test_the_controlnet_checkbox_builds_an_engine_with_controlnet_inputs(tmp_path):
    source = tiny_source(tmp_path, "cpu")
    tab = create_tab(source)
    steps = run_export(tab, TINY_FIELDS, controlnet=True)
    assert "ControlNet" in steps[-1][2], steps[-1][2][:500]  # the result panel names the engine
    assert [e.family for e in source.workspace.manifest().entries()] == ["tiny-controlnet"]
