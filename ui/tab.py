"""The TensorRT tab: export form with a live progress bar, and the engine table.

`create_tab(source)` returns the Blocks the WebUI's on_ui_tabs gets (it queues the whole demo)
and that the standalone runner queues itself. Every handler turns a failure into a short
message next to what failed; the log keeps the traceback.
"""
from __future__ import annotations

import functools
import logging
import time
from html import escape
from typing import Any, Callable

import gradio as gr

from sd_unet_trt.errors import UserError
from sd_unet_trt.trt_core import jobs
from sd_unet_trt.trt_core.backends import best_backend, get_backend
from sd_unet_trt.trt_core.build_check import BuildChoice, build_problem, unknown_precision
from sd_unet_trt.trt_core.catalog import CatalogItem, catalog
from sd_unet_trt.trt_core.jobs import user_message
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.ui.controlnet_build import NO_CONTROLNET, controlnet_choices, start_controlnet_build
from sd_unet_trt.ui.engines import engine_rows, which_engine, COLUMNS
from sd_unet_trt.trt_core.estimate import estimate, human_bytes
from sd_unet_trt.trt_core.profiles import shown
from sd_unet_trt.ui.form import (DIMENSIONS, ENDS, FIELD_COUNT, PRECISION_NOTES, PRECISIONS, FormCheck, backend_choices,
                                 check_fields, default_precision, preset_named, presets, profile_fields)
from sd_unet_trt.ui.render import estimate_panel, field_message, message, progress_bar, result_panel
from sd_unet_trt.trt_core.unet_source import UNetSource
from sd_unet_trt.ui.source import ModelSource, NoModelLoaded
from sd_unet_trt.ui.tab_outputs import WHICH_QUERY, EngineOutputs, ModelOutputs, cleared_messages, keep

log = logging.getLogger(__name__)
POLL_S = 0.3  # how often the progress bar is redrawn while a build runs
TAB_CSS = ".trt-engines td, .trt-engines th {padding: 2px 8px; border-bottom: 1px solid #8884}"


def _failed(fallback: Callable[[BaseException], Any], name: str, exc: BaseException) -> Any:
    if not isinstance(exc, NoModelLoaded):
        log.error("%s failed", name, exc_info=exc)
    return fallback(exc)


def _guard(fallback: Callable[[BaseException], Any]):
    """Run a handler; on any failure log it and return `fallback(exc)` (a message) instead."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args):
            try:
                return fn(*args)
            except Exception as e:  # noqa: BLE001 - the tab shows a message, never a traceback
                return _failed(fallback, fn.__name__, e)
        return run
    return wrap


def _guard_generator(fallback: Callable[[BaseException], Any]):
    """_guard for generator handlers: a failure becomes one last yield of `fallback(exc)`."""
    def wrap(fn):
        @functools.wraps(fn)
        def run(*args):
            try:
                yield from fn(*args)
            except Exception as e:  # noqa: BLE001 - the tab shows a message, never a traceback
                yield _failed(fallback, fn.__name__, e)
        return run
    return wrap


def engines_table(items: list[CatalogItem]) -> str:
    if not items:
        return '<div class="trt-engines-empty" data-count="0">No engines yet.</div>'
    head = "".join(f"<th>{escape(c)}</th>" for c in COLUMNS)
    body = ""
    for item, row in zip(items, engine_rows(items)):
        cells = "".join(f"<td>{escape(v)}</td>" for v in row)
        body += f'<tr data-engine="{escape(item.entry.id)}" data-status="{item.status.state}">{cells}</tr>'
    return (f'<div style="overflow-x:auto"><table class="trt-engines" data-count="{len(items)}">'
            f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>")


def preferred_backend(device: str, installed: list[str]) -> str | None:
    """The backend the CLI's `build` would pick on this device (not TensorRT on a machine whose GPU
    cannot run its engines, or that has none), when the tab offers it."""
    try:
        best = best_backend(device).name
    except Exception:  # noqa: BLE001 - no backend builds here: the tab says why under the choice
        best = None
    return best if best in installed else (installed[0] if installed else None)


def create_tab(source: ModelSource) -> gr.Blocks:
    workspace = source.workspace
    backends = backend_choices()
    installed = [b.name for b in backends if b.available]
    missing_note = "\n".join(f"{b.name} is not available: {b.reason}" for b in backends if not b.available)

    def current() -> UNetSource:
        return source.current_model()

    def items() -> list[CatalogItem]:
        return catalog(workspace, source.device)

    # ---- model and presets --------------------------------------------------------------
    def model_state():
        """Model line, preset choices + default, the fields, their messages and the estimate."""
        try:
            model = current()
        except NoModelLoaded as e:
            return ModelOutputs.failed(message(str(e), "warn"), gr.update(choices=[], value=None)).flat()
        options = presets(model.family)
        line = (f'<div class="trt-model" data-family="{escape(model.family.name)}">Model: '
                f"<b>{escape(model.checkpoint.name)}</b> [{escape(model.checkpoint.short_hash)}], "
                f"{escape(model.family.label)}</div>")
        values = profile_fields(options[0].profile)
        estimate_now = estimate_text(values, default_backend, default_precision(source.device))
        return ModelOutputs(line, gr.update(choices=[p.name for p in options], value=options[0].name), values,
                            cleared_messages(), estimate_now, which_defaults(options[0].profile)).flat()

    def which_defaults(profile) -> list[int]:
        """"Which engine?" asks first about the default preset's own size: one its engines cover."""
        return [getattr(profile, name).opt for name, _, _ in WHICH_QUERY]

    def estimate_text(values, backend_name, precision) -> str:
        check = check_fields(values)
        if not check.ok:
            return ""
        # the refusal a click would meet (e.g. onnxruntime takes no int8), said before the click
        problem = (build_problem(BuildChoice(backend_name, precision, check.profile)) if backend_name
                   else unknown_precision(precision))
        if problem:
            return message(str(problem), "error")
        try:
            model = current()
        except NoModelLoaded:
            return ""
        history = [i.entry for i in items()]
        params = model.parameters()
        panel = estimate_panel(estimate(params, model.family, check.profile, precision, backend_name or "tensorrt",
                                        source.device, workspace, model.checkpoint, history))
        note = PRECISION_NOTES.get(precision)
        return panel + message(note, "info") if note else panel

    def on_preset(name, backend_name, precision):
        model = current()
        values = profile_fields(preset_named(model.family, name).profile)
        return values + cleared_messages() + [estimate_text(values, backend_name, precision), ""]

    def on_fields(*args):
        values, (backend_name, precision) = list(args[:FIELD_COUNT]), args[FIELD_COUNT:]
        check: FormCheck = check_fields(values)
        return ([field_message(check.message(f)) for f, _, _ in DIMENSIONS]
                + [estimate_text(values, backend_name, precision) if check.ok else ""])

    # ---- export ---------------------------------------------------------------------------
    def export(*args):
        values, (backend_name, precision, controlnet, controlnet_model) = list(args[:FIELD_COUNT]), args[FIELD_COUNT:]
        controlnet = bool(controlnet)
        unchanged = EngineOutputs.unchanged()

        def say(text, kind="error"):
            return [message(text, kind), gr.update(), gr.update()] + unchanged

        check = check_fields(values)
        if not check.ok:
            yield say("fix the profile first: " + check.summary())
            return
        try:
            if controlnet_model and controlnet_model != NO_CONTROLNET:  # an engine of that ControlNet, not the UNet's
                started, _ = start_controlnet_build(source, controlnet_model, check.profile, backend_name, precision)
            else:
                started = start_unet_build(check.profile, backend_name, precision, controlnet)
        except UserError as e:  # a refused build: its line under the button
            yield say(str(e))
            return
        if not started.ok:
            yield say(started.refused, "warn")
            return
        clear_message = ""  # once: later yields leave room for messages of other clicks (a refusal)
        while True:
            status = jobs.status(started.job_id)
            if status is None or not status.active:
                break
            yield [clear_message, progress_bar(status), ""] + unchanged
            clear_message = gr.update()
            time.sleep(POLL_S)
        yield [gr.update(), progress_bar(status), result_panel(status, workspace)] + engine_views()

    def start_unet_build(profile, backend_name, precision, controlnet: bool) -> jobs.JobStart:
        model = current()
        problem = build_problem(BuildChoice(backend_name, precision, profile, controlnet))
        if problem:
            raise problem
        backend = get_backend(backend_name)

        def work(progress, cancel):
            return source.run_exclusive(lambda: build_engine(
                model, profile, backend, workspace, precision=precision, device=source.device, progress=progress,
                cancel=cancel, controlnet=controlnet))

        title = f"{model.checkpoint.name}: {profile.label()} [{backend_name} {precision}{', ControlNet' if controlnet else ''}]"
        return jobs.start(title, work)

    def cancel_build():
        running = jobs.current()
        if running is None:
            return message("no build is running", "info")
        jobs.cancel(running.id)
        return message("cancelling: the build stops at its next check and removes what it wrote", "warn")

    # ---- engines --------------------------------------------------------------------------
    def engine_views(note: str = "", kind: str = "info"):
        listed = items()
        problems = workspace.manifest().problems
        if problems:
            note = (note + "\n" if note else "") + "skipped malformed entries: " + "; ".join(problems)
            kind = "warn"
        ids = [i.entry.id for i in listed]
        return EngineOutputs(engines_table(listed), gr.update(choices=ids, value=None), gr.update(visible=False),
                             message(note, kind)).flat()

    def ask_delete(engine_id):
        if not engine_id:
            return gr.update(visible=False), "", message("choose an engine to delete first", "warn")
        entry = workspace.manifest().get(engine_id)
        if entry is None:
            return gr.update(visible=False), "", message(f"{shown(engine_id)} is no longer in the manifest; refresh",
                                                         "warn")
        text = (f'<div class="trt-confirm">Delete <b>{escape(entry.id)}</b> and its file '
                f"({escape(human_bytes(entry.file_size))})? This cannot be undone.</div>")
        return gr.update(visible=True), text, ""

    def delete(engine_id):
        if not engine_id or workspace.manifest().get(engine_id) is None:
            return engine_views(f"{shown(engine_id) if engine_id else 'that engine'} is no longer in the manifest",
                                "warn")
        removal = workspace.manifest().remove(engine_id)
        return engine_views(removal.line("deleted"), "warn" if removal.kept else "ok")

    def which(width, height, batch, tokens):
        def whole(v):
            return int(v) if isinstance(v, (int, float)) and float(v).is_integer() else v
        try:
            sha = current().checkpoint.sha256
        except NoModelLoaded:
            sha = None
        answer = which_engine(items(), whole(width), whole(height), whole(batch), whole(tokens), sha)
        return f'<div class="trt-which">{escape(answer)}</div>'

    default_backend = preferred_backend(source.device, installed)
    with gr.Blocks(analytics_enabled=False, css=TAB_CSS) as tab:
        with gr.Row():
            with gr.Column(scale=5):
                model_line = gr.HTML(message("checking the loaded model...", "info"), elem_id="trt_model")
            with gr.Column(scale=1, min_width=160):
                reload_model = gr.Button("Reload model info", size="sm", elem_id="trt_reload_model")
        with gr.Tab("Export"):
            preset = gr.Dropdown(label="Preset (fills the ranges below)", choices=[], elem_id="trt_preset")
            with gr.Accordion("Advanced: profile ranges", open=False, elem_id="trt_advanced"):
                fields, field_msgs = [], []
                for name, label, unit in DIMENSIONS:
                    with gr.Row():
                        for which_end in ENDS:
                            fields.append(gr.Number(label=f"{label} {which_end} ({unit})",
                                                    elem_id=f"trt_{name}_{which_end}"))
                        field_msgs.append(gr.HTML(elem_id=f"trt_{name}_msg"))
            with gr.Row():
                backend = gr.Dropdown(label="Backend", choices=installed, value=default_backend,
                                      elem_id="trt_backend")
                precision = gr.Radio(label="Precision", choices=list(PRECISIONS),
                                     value=default_precision(source.device), elem_id="trt_precision")
                controlnet = gr.Checkbox(label="ControlNet inputs (sd-webui-controlnet generations, T2I-Adapters "
                                               "included, run on it too)", value=False, elem_id="trt_controlnet")
            controlnet_model = gr.Dropdown(label="Or an engine of this ControlNet model (its unit's ControlNet runs "
                                                 "on it)", choices=controlnet_choices(source), value=NO_CONTROLNET,
                                           elem_id="trt_controlnet_model")
            gr.HTML(message(missing_note, "info") if missing_note else "")
            estimate_box = gr.HTML(elem_id="trt_estimate")
            with gr.Row():
                export_btn = gr.Button("Export engine", variant="primary", elem_id="trt_export")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="trt_cancel")
            export_msg = gr.HTML(elem_id="trt_export_msg")
            progress = gr.HTML(progress_bar(None), elem_id="trt_progress")
            result = gr.HTML(elem_id="trt_result")
        with gr.Tab("Engines"):
            table = gr.HTML(elem_id="trt_engines")
            engines_msg = gr.HTML(elem_id="trt_engines_msg")
            with gr.Row():
                engine_pick = gr.Dropdown(label="Engine", choices=[], elem_id="trt_engine_pick", scale=4)
                with gr.Column(scale=1, min_width=160):
                    refresh_btn = gr.Button("Refresh", size="sm", elem_id="trt_refresh")
                    delete_btn = gr.Button("Delete...", variant="stop", size="sm", elem_id="trt_delete")
            with gr.Row(visible=False) as confirm_row:
                confirm_text = gr.HTML(elem_id="trt_confirm_text")
                confirm_btn = gr.Button("Yes, delete", variant="stop", elem_id="trt_confirm_delete")
                keep_btn = gr.Button("Keep it", elem_id="trt_keep")
            gr.Markdown("Which engine would serve a generation (cond + uncond rows, as the WebUI sends them):")
            with gr.Row():
                which_query = [gr.Number(label=label, value=first, elem_id=f"trt_q_{name}")
                               for name, label, first in WHICH_QUERY]
                which_btn = gr.Button("Which engine?", elem_id="trt_which")
            which_out = gr.HTML(elem_id="trt_which_out")

        engine_outputs = EngineOutputs(table, engine_pick, confirm_row, engines_msg).flat()
        model_outputs = ModelOutputs(model_line, preset, fields, field_msgs, estimate_box, which_query).flat()
        model_fail = _guard(lambda e: ModelOutputs.failed(message(user_message(e), "error")).flat())
        engines_fail = _guard(lambda e: EngineOutputs(gr.update(), gr.update(), gr.update(visible=False),
                                                      message(user_message(e), "error")).flat())

        def on_load():
            return list(model_fail(model_state)()) + list(engines_fail(engine_views)())

        tab.load(on_load, outputs=model_outputs + engine_outputs, queue=False)
        reload_model.click(model_fail(model_state), outputs=model_outputs, queue=False)
        # ControlNet may list its models after the tab is made (and again after its own refresh)
        controlnet_list = _guard(lambda e: gr.update())(lambda: gr.update(choices=controlnet_choices(source)))
        for event in (tab.load, reload_model.click):
            event(controlnet_list, outputs=controlnet_model, queue=False)
        preset_fail = _guard(lambda e: keep(FIELD_COUNT) + cleared_messages() + ["", message(user_message(e), "error")])
        preset.select(preset_fail(on_preset),
                      inputs=[preset, backend, precision], outputs=fields + field_msgs + [estimate_box, export_msg],
                      queue=False)
        field_fail = _guard(lambda e: cleared_messages() + [message(user_message(e), "error")])
        for component in fields + [backend, precision]:
            component.input(field_fail(on_fields), inputs=fields + [backend, precision],
                            outputs=field_msgs + [estimate_box], queue=False)
        export_fail = _guard_generator(lambda e: [message(user_message(e), "error"), gr.update(), gr.update()]
                                       + EngineOutputs.unchanged())
        export_btn.click(export_fail(export), inputs=fields + [backend, precision, controlnet, controlnet_model],
                         outputs=[export_msg, progress, result] + engine_outputs, show_progress="hidden")
        cancel_btn.click(_guard(lambda e: message(user_message(e), "error"))(cancel_build), outputs=export_msg,
                         queue=False)
        refresh_btn.click(engines_fail(engine_views), outputs=engine_outputs, queue=False)
        delete_btn.click(_guard(lambda e: [gr.update(visible=False), "", message(user_message(e), "error")])(ask_delete),
                         inputs=engine_pick, outputs=[confirm_row, confirm_text, engines_msg], queue=False)
        confirm_btn.click(engines_fail(delete), inputs=engine_pick, outputs=engine_outputs, queue=False)
        keep_btn.click(lambda: (gr.update(visible=False), message("kept", "info")),
                       outputs=[confirm_row, engines_msg], queue=False)
        which_btn.click(_guard(lambda e: message(user_message(e), "error"))(which),
                        inputs=which_query, outputs=which_out, queue=False)
    return tab
