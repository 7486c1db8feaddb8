"""UNet -> ONNX with named dynamic axes, cleaned and constant-folded by onnx-graphsurgeon.

The module exported is always our own `models.unet.UNetModel`, built on the meta device and
handed the source UNet's tensors (no copy unless the dtype changes). So export never moves the
source model, never runs through the WebUI's hijacked forwards, and changes no global setting.

Every UNet weight stays an initializer of its own, named by its state-dict name (what the WebUI's
UNet calls it too): folding never touches weights, and the exporter's merging of identical weights
is undone. So TensorRT refit, an ONNX Runtime session and the weights record all address a weight
by that one name. Beside the ONNX, `unet.weights.json` (trt_core.weights) records the exported
weights' fingerprints; its digest is the engines' weight identity.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from sd_unet_trt.errors import UserError
from sd_unet_trt.models.families import ModelFamily, config_from_state_dict, family_of_config
from sd_unet_trt.models.unet import UNetModel
from sd_unet_trt.trt_core.atomic import TEMP_MARK
from sd_unet_trt.trt_core.finite import non_finite_problem
from sd_unet_trt.trt_core.export_folder import DATA_NAME, ONNX_NAME, put_in_place, writable
from sd_unet_trt.trt_core.precision import EXPORT_WEIGHTS, PRECISIONS
from sd_unet_trt.trt_core.progress import CancelToken, ProgressFn, no_progress
from sd_unet_trt.trt_core.quantize import calibration_inputs, quantized_unet
from sd_unet_trt.trt_core.weights import RECORD_NAME, WeightsRecord

WEIGHTS_METADATA = "sd_unet_trt.weights"  # metadata_props key: the named weights' shapes and fingerprints
PROTOBUF_LIMIT = 2 * 1024**3


class ExportError(UserError, RuntimeError):
    pass


@dataclass(frozen=True)
class ExportResult:
    onnx_path: Path
    family: ModelFamily
    weights: str  # "fp32" or "fp16": the dtype stored in the ONNX; "int8"/"fp8": fp32 weights behind Q/DQ nodes
    seconds: float
    record: WeightsRecord  # what the export holds

    @classmethod
    def read(cls, folder: Path, family: ModelFamily, weights: str) -> "ExportResult":
        """An export made earlier; ValueError when it has no valid weights record (made by an older
        version, or damaged), so it must be made again."""
        record = WeightsRecord.load(Path(folder) / RECORD_NAME)
        if not (Path(folder) / ONNX_NAME).is_file():
            raise ValueError(f"{folder} has no {ONNX_NAME}")
        return cls(Path(folder) / ONNX_NAME, family, weights, 0.0, record)


def dynamic_axes(family: ModelFamily) -> dict[str, dict[int, str]]:
    axes = {"x": {0: "rows", 2: "latent_height", 3: "latent_width"}, "timesteps": {0: "rows"},
            "context": {0: "rows", 1: "context_len"}, "out": {0: "rows", 2: "latent_height", 3: "latent_width"}}
    if family.y_dim:
        axes["y"] = {0: "rows"}
    for i, name in enumerate(family.control_names):
        axes[name] = {0: "rows", 2: f"control_{i}_height", 3: f"control_{i}_width"}
    return axes


def sample_inputs(family: ModelFamily, rows: int, latent_h: int, latent_w: int, context_len: int,
                  dtype: torch.dtype, device: torch.device | str, generator: torch.Generator | None = None) -> tuple[torch.Tensor, ...]:
    """Random inputs of one call, in `family.input_names` order; timesteps stay float32 (fp16
    cannot hold 999.5 exactly)."""
    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)
    x = randn(rows, family.in_channels, latent_h, latent_w)
    timesteps = (torch.rand(rows, generator=generator) * 999).to(device)
    context = randn(rows, context_len, family.context_dim)
    inputs = (x, timesteps, context) + ((randn(rows, family.y_dim),) if family.y_dim else ())
    if family.controlnet:  # residuals of ControlNet's size: a tenth of the activations they join
        inputs += tuple(randn(*shape) * 0.1 for shape in family.control_shapes(rows, latent_h, latent_w))
    return inputs


def unpack_inputs(family: ModelFamily, inputs: tuple[torch.Tensor, ...]) -> tuple:
    """(x, timesteps, context, y or None, control residuals or None) of a call's flat inputs."""
    x, timesteps, context, *rest = inputs
    y = rest.pop(0) if family.y_dim else None
    return x, timesteps, context, y, (rest or None)


def shadow_unet(source: torch.nn.Module, family: ModelFamily, dtype: torch.dtype) -> UNetModel:
    """Our UNet class holding the source's weights: the same tensors where the dtype matches."""
    state = source.state_dict()
    config = config_from_state_dict({k: v for k, v in state.items()})
    if family_of_config(config, family.prediction) != family.plain:
        raise ExportError(f"the UNet's weights are {family_of_config(config, family.prediction).label}, "
                          f"not {family.plain.label}")
    with torch.device("meta"):
        unet = UNetModel(config)
    with torch.no_grad():
        unet.load_state_dict({k: v.detach().to(dtype) for k, v in state.items()}, strict=True, assign=True)
    return unet.eval().requires_grad_(False)


def _separate_shared_weights(graph, weight_names: set[str]) -> None:
    """The exporter stores identical weights once and feeds the others through Identity nodes named
    after them: give each its own initializer again (a LoRA may change one and not the other)."""
    import numpy as np
    import onnx_graphsurgeon as gs

    for node in graph.nodes:
        if node.op == "Identity" and isinstance(node.inputs[0], gs.Constant) and node.outputs[0].name in weight_names:
            out, values = node.outputs[0], node.inputs[0].values
            node.outputs.clear()
            out.to_constant(np.array(values, copy=True))
    graph.cleanup()


def _fold_around_weights(graph, weight_names: set[str]) -> None:
    """Fold what does not depend on weights (shapes, constants): weights are graph inputs while
    folding, so no weight is transposed or merged into an anonymous constant."""
    import onnx_graphsurgeon as gs

    from sd_unet_trt.trt_core.onnxruntime_log import route_onnxruntime_log
    route_onnxruntime_log()  # the folding sessions' optimizer notes: shown with -v
    weights = {name: t for name, t in graph.tensors().items() if isinstance(t, gs.Constant) and name in weight_names}
    values = {}
    for name, tensor in weights.items():
        values[name] = tensor.values
        tensor.to_variable(dtype=tensor.values.dtype, shape=list(tensor.values.shape))
        graph.inputs.append(tensor)
    graph.fold_constants().cleanup()
    tensors = graph.tensors()
    for name, value in values.items():
        graph.inputs.remove(tensors[name])
        tensors[name].to_constant(value)


def _clean_and_save(raw_path: Path, out_dir: Path, fold: bool, record: WeightsRecord,
                    shapes: dict[str, list[int]]) -> None:
    import onnx
    import onnx_graphsurgeon as gs

    weight_names = set(record.fingerprints)
    model = onnx.load(str(raw_path), load_external_data=True)
    graph = gs.import_onnx(model)
    _separate_shared_weights(graph, weight_names)
    if fold:
        _fold_around_weights(graph, weight_names)
    graph.cleanup().toposort()
    model = gs.export_onnx(graph)
    # the weights a runtime may replace by name, so it can check a name and shape before using it
    meta = model.metadata_props.add()
    meta.key, meta.value = WEIGHTS_METADATA, json.dumps({"shapes": shapes, "fingerprints": record.fingerprints})
    # keep the ONNX opset the exporter chose; graphsurgeon may not carry ir_version over
    large = sum(t.ByteSize() for t in model.graph.initializer) > PROTOBUF_LIMIT - 64 * 1024**2
    onnx.save_model(model, str(out_dir / ONNX_NAME), save_as_external_data=large,
                    all_tensors_to_one_file=True, location=DATA_NAME, size_threshold=1024)


def export_onnx(source: torch.nn.Module, family: ModelFamily, out_dir: Path, *, weights: str = "fp16",
                device: torch.device | str | None = None, progress: ProgressFn = no_progress,
                cancel: CancelToken | None = None, source_label: str = "a module in memory",
                checkpoint_sha256: str = "") -> ExportResult:
    """Write `out_dir/unet.onnx` (and `unet.onnx.data` when over protobuf's 2 GB) and its weights
    record. The folder appears whole or not at all: it is assembled in a temp folder and moved into
    place (trt_core.export_folder), only into a new or empty folder or over an earlier export of
    ours; any other folder is refused (FolderRefused) before anything is exported."""
    if weights not in EXPORT_WEIGHTS:
        raise ExportError(f"ONNX weights must be {', '.join(EXPORT_WEIGHTS[:-1])} or {EXPORT_WEIGHTS[-1]}, not {weights!r}")
    out_dir = writable(out_dir)
    started = time.monotonic()
    cancel = cancel or CancelToken()
    first = next(source.parameters(), None)
    device = torch.device(device) if device is not None else (first.device if first is not None else torch.device("cpu"))
    if device.type == "meta":
        raise ExportError("the UNet's weights are not loaded (meta device); load the checkpoint first")
    quantized = PRECISIONS[weights].quantized
    dtype = PRECISIONS[weights].trace_dtype
    progress("export: preparing the UNet", 0.02)
    unet = shadow_unet(source, family, dtype)
    state = unet.state_dict()
    problem = non_finite_problem(state, source.state_dict(), weights)
    if problem:  # before anything is written: such weights would only fail the ONNX check, as "differs by inf"
        raise ExportError(problem)
    record = WeightsRecord.of(state, source_label, checkpoint_sha256, dtype=weights)
    unet_on_device = unet.to(device)  # no-op for tensors already there; copies only offloaded ones
    if quantized:
        progress(f"export: calibrating {weights} quantizers on the UNet's own activations", 0.03)
        latent = family.native_px // 8
        unet_on_device = quantized_unet(unet_on_device, weights, calibration_inputs(family, (latent, latent)),
                                        in_place=True)
        cancel.raise_if_cancelled()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{TEMP_MARK}{os.getpid()}-{out_dir.name}.", dir=out_dir.parent))
    try:
        raw_dir = work / "raw"
        raw_dir.mkdir()
        args = sample_inputs(family, 2, 8, 8, 77, dtype, device)
        cancel.raise_if_cancelled()
        progress("export: tracing the UNet to ONNX", 0.05)
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if family.controlnet:  # the residuals go in as forward's `control` list, one graph input each
                *plain, control = unpack_inputs(family, args)
                args = (*(t for t in plain if t is not None), {"control": list(control)})
            torch.onnx.export(unet_on_device, args, str(raw_dir / ONNX_NAME), dynamo=False,
                              opset_version=PRECISIONS[weights].onnx_opset,
                              input_names=list(family.input_names), output_names=["out"],
                              dynamic_axes=dynamic_axes(family), do_constant_folding=False)
        del unet_on_device, unet
        cancel.raise_if_cancelled()
        progress("export: cleaning and folding the graph", 0.6)
        final = work / "final"
        final.mkdir()
        size = sum(f.stat().st_size for f in raw_dir.iterdir())
        # a quantized graph keeps its Q/DQ pairs as exported: TensorRT fuses them itself
        _clean_and_save(raw_dir / ONNX_NAME, final, size < PROTOBUF_LIMIT and not quantized, record,
                        {name: list(t.shape) for name, t in state.items()})
        del state
        record.save(final / RECORD_NAME)
        cancel.raise_if_cancelled()
        progress("export: saving", 0.95)
        put_in_place(final, out_dir, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    progress("export: done", 1.0)
    return ExportResult(out_dir / ONNX_NAME, family, weights, time.monotonic() - started, record)
