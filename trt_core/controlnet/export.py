"""ControlNet -> ONNX, the way trt_core/export.py exports a UNet: traced by torch.onnx with named
dynamic axes, then every weight its own initializer under its state-dict name and constants folded
around the weights (export.py's `_clean_and_save`), with a weights record, assembled aside and moved
into place (export_folder.py). Runs in the export's child process (`export-controlnet`)."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import torch

from sd_unet_trt.models.controlnet import ControlNetModel
from sd_unet_trt.trt_core.atomic import TEMP_MARK
from sd_unet_trt.trt_core.controlnet.family import ControlNetFamily
from sd_unet_trt.trt_core.export import ExportError, ExportResult, PROTOBUF_LIMIT, _clean_and_save
from sd_unet_trt.trt_core.export_folder import ONNX_NAME, put_in_place, writable
from sd_unet_trt.trt_core.finite import non_finite_problem
from sd_unet_trt.trt_core.precision import PRECISIONS
from sd_unet_trt.trt_core.progress import CancelToken, ProgressFn, no_progress
from sd_unet_trt.trt_core.weights import RECORD_NAME, WeightsRecord


def dynamic_axes(family: ControlNetFamily) -> dict[str, dict[int, str]]:
    axes = {"x": {0: "rows", 2: "latent_height", 3: "latent_width"}, "hint": {0: "rows", 2: "hint_height", 3: "hint_width"},
            "timesteps": {0: "rows"}, "context": {0: "rows", 1: "context_len"}}
    if family.y_dim:
        axes["y"] = {0: "rows"}
    for i, name in enumerate(family.output_names):
        axes[name] = {0: "rows", 2: f"{name}_height", 3: f"{name}_width"}
    return axes


def sample_call(family: ControlNetFamily, rows: int, latent_h: int, latent_w: int, context_len: int,
                dtype: torch.dtype, device: torch.device | str,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs of one call in `family.input_names` order: x, hint (in [0, 1], as control images
    are), timesteps (float32, continuous), context[, y]."""
    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)
    hint_shape = family.control_shapes(rows, latent_h, latent_w)[0]
    hint = torch.rand(*hint_shape, generator=generator).to(device=device, dtype=dtype)
    timesteps = (torch.rand(rows, generator=generator) * 999).to(device)
    inputs = (randn(rows, family.in_channels, latent_h, latent_w), hint, timesteps,
              randn(rows, context_len, family.context_dim))
    return inputs + ((randn(rows, family.y_dim),) if family.y_dim else ())


def export_controlnet_onnx(model: ControlNetModel, family: ControlNetFamily, out_dir: Path, *, weights: str,
                           device: torch.device | str = "cpu", progress: ProgressFn = no_progress,
                           cancel: CancelToken | None = None, source_label: str = "a module in memory",
                           sha256: str = "") -> ExportResult:
    """Write `out_dir/unet.onnx` (the export folder's one name for its model) and its weights record."""
    if weights not in ("fp16", "fp32"):
        raise ExportError(f"a ControlNet's ONNX holds fp16 or fp32 weights, not {weights!r}")
    out_dir = writable(out_dir)
    started = time.monotonic()
    cancel = cancel or CancelToken()
    dtype = PRECISIONS[weights].trace_dtype
    progress("export: preparing the ControlNet", 0.02)
    source_state = model.state_dict()
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    state = model.state_dict()
    problem = non_finite_problem(state, source_state, weights)
    if problem:
        raise ExportError(problem.replace("UNet", "ControlNet").replace("checkpoint", "ControlNet file"))
    record = WeightsRecord.of(state, source_label, sha256, dtype=weights, model="controlnet")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{TEMP_MARK}{os.getpid()}-{out_dir.name}.", dir=out_dir.parent))
    try:
        raw_dir = work / "raw"
        raw_dir.mkdir()
        args = sample_call(family, 2, 8, 8, 77, dtype, device)
        cancel.raise_if_cancelled()
        progress("export: tracing the ControlNet to ONNX", 0.05)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, args, str(raw_dir / ONNX_NAME), dynamo=False,
                              opset_version=PRECISIONS[weights].onnx_opset, input_names=list(family.input_names),
                              output_names=list(family.output_names), dynamic_axes=dynamic_axes(family),
                              do_constant_folding=False)
        cancel.raise_if_cancelled()
        progress("export: cleaning and folding the graph", 0.6)
        final = work / "final"
        final.mkdir()
        size = sum(f.stat().st_size for f in raw_dir.iterdir())
        _clean_and_save(raw_dir / ONNX_NAME, final, size < PROTOBUF_LIMIT, record,
                        {name: list(t.shape) for name, t in state.items()})
        record.save(final / RECORD_NAME)
        cancel.raise_if_cancelled()
        progress("export: saving", 0.95)
        put_in_place(final, out_dir, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress("export: done", 1.0)
    return ExportResult(out_dir / ONNX_NAME, family, weights, time.monotonic() - started, record)
