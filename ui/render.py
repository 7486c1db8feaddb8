"""HTML fragments the tab shows: progress bar, result panel, estimate, messages.

Every fragment carries a class and data attributes so the browser test can read state without
parsing prose."""
from __future__ import annotations

from html import escape

from sd_unet_trt.models.families import CONTROLNET_SUFFIX
from sd_unet_trt.trt_core.estimate import Estimate, human_bytes, human_seconds
from sd_unet_trt.trt_core.jobs import CANCELLED, DONE, FAILED, JobStatus
from sd_unet_trt.trt_core.workspace import Workspace

COLORS = {"running": "#2563eb", DONE: "#16a34a", FAILED: "#dc2626", CANCELLED: "#6b7280"}


def message(text: str, kind: str = "info") -> str:
    """A short message box; kind is info, ok, warn or error."""
    if not text:
        return ""
    color = {"info": "#2563eb", "ok": "#16a34a", "warn": "#b45309", "error": "#dc2626"}[kind]
    return (f'<div class="trt-msg trt-msg-{kind}" style="border-left:4px solid {color};padding:4px 8px;'
            f'margin:2px 0;white-space:pre-wrap">{escape(text)}</div>')


def field_message(text: str) -> str:
    return f'<div class="trt-field-msg" style="color:#dc2626;font-size:90%">{escape(text)}</div>' if text else ""


def progress_bar(status: JobStatus | None) -> str:
    if status is None:
        return '<div class="trt-progress" data-state="idle"></div>'
    percent = round(100 * status.fraction)
    color = COLORS.get(status.state, COLORS["running"])
    label = f"{status.phase} - {percent}%" if status.active else {
        DONE: f"done in {status.elapsed:.0f} s - 100%", FAILED: f"failed: {status.error}",
        CANCELLED: "cancelled; nothing was written"}.get(status.state, status.state)
    return (f'<div class="trt-progress" data-state="{status.state}" data-percent="{percent}" '
            f'data-job="{escape(status.id)}">'
            f'<div style="font-weight:600;margin-bottom:4px">{escape(status.title)}</div>'
            f'<div style="background:#e5e7eb;border-radius:4px;height:18px;overflow:hidden">'
            f'<div class="trt-progress-fill" style="width:{percent}%;background:{color};height:100%;'
            f'transition:width .3s"></div></div>'
            f'<div class="trt-progress-label" style="margin-top:4px">{escape(label)}</div></div>')


def result_panel(status: JobStatus | None, workspace: Workspace) -> str:
    if status is None or status.active:
        return ""
    if status.state != DONE or status.result is None:
        return message(status.error or status.state, "warn" if status.state == CANCELLED else "error")
    entry = status.result
    engine_path = workspace.engine_dir / entry.file
    onnx_path = workspace.root / entry.details.get("onnx", "")
    rows = [("Engine", entry.id), ("Engine file", f"{engine_path} ({human_bytes(entry.file_size)})"),
            ("ONNX export", str(onnx_path)), ("Backend", f"{entry.backend} {entry.backend_version} on {entry.gpu_arch}"),
            ("Precision", entry.precision), ("Profile", entry.profile.label()),
            ("Build time", f"{entry.build_seconds:.1f} s")]
    if entry.family.endswith(CONTROLNET_SUFFIX):
        rows.insert(5, ("Inputs", "ControlNet's residuals too (zeros without ControlNet)"))
    for name, accuracy in (("Engine vs PyTorch", entry.accuracy), ("ONNX vs PyTorch", entry.details.get("onnx_accuracy"))):
        if accuracy:
            verdict = "passed" if accuracy["max_rel"] <= accuracy["tolerance"] else "FAILED"
            rows.append((name, f"{verdict}: relative error {accuracy['max_rel']:.2e} "
                               f"(allowed {accuracy['tolerance']:.0e}), max abs {accuracy['max_abs']:.2e}"))
    loop = entry.accuracy.get("loop_rel_error")
    if loop is not None:  # INT8/FP8: the quality gate (trt_core/quality.py)
        rows.append(("Denoising loop vs PyTorch",
                     f"passed: final latent {loop:.1%} off at worst, {entry.accuracy['loop_mean_rel_error']:.1%} "
                     f"on average ({entry.accuracy['loop_cases']:.0f} images of {entry.accuracy['loop_steps']:.0f} "
                     f"steps; allowed {entry.accuracy['loop_tolerance']:.0%})"
                     + (f"; decoded image PSNR {entry.accuracy['loop_image_psnr_db']:.1f} dB at worst"
                        if "loop_image_psnr_db" in entry.accuracy else "")))
    if entry.details.get("unverified"):  # built where it cannot run (TensorRT for RTX without a GPU)
        rows.append(("Engine vs PyTorch", f"not checked: {entry.details['unverified']}"))
    rows += [("Note", note) for note in entry.details.get("notes", [])]
    body = "".join(f"<tr><th style='text-align:left;padding-right:12px'>{escape(k)}</th><td>{escape(v)}</td></tr>"
                   for k, v in rows)
    return f'<div class="trt-result" data-engine="{escape(entry.id)}"><table>{body}</table></div>'


def estimate_panel(est: Estimate | None, note: str = "") -> str:
    if est is None:
        return message(note, "warn") if note else ""
    onnx = f" + {human_bytes(est.onnx_bytes)} ONNX export (once per checkpoint)" if est.onnx_bytes else " (ONNX export already there)"
    return (f'<div class="trt-estimate">Estimate: disk {human_bytes(est.engine_bytes)} engine{escape(onnx)}; '
            f'{est.memory_kind} about {human_bytes(est.memory_bytes)} while building; '
            f'time about {human_seconds(est.build_seconds)} <span style="opacity:.7">({escape(est.time_basis)})</span></div>')
