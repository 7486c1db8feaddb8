"""The torch backend: build (torch.export at one size, Inductor's standalone compile, the engine
file) and load (the compiled artifact and the weights straight onto the device)."""
from __future__ import annotations

import copy
import json
import os
import pickle
import struct
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.atomic import TEMP_MARK
from sd_unet_trt.trt_core.backends.base import (Availability, Backend, BuildOutcome, BuildRequest, EngineFileError,
                                                arch_tag)
from sd_unet_trt.trt_core.backends.torch_compiled.attention import (
    fused_projections,
    sdpa_choices,
    sdpa_preference,
    sdpa_scope,
    weight_sources,
)
from sd_unet_trt.trt_core.backends.torch_compiled.engine import TorchCompiledEngine
from sd_unet_trt.trt_core.backends.torch_compiled.fake_quant import fake_quantized, stored_mismatches
from sd_unet_trt.trt_core.backends.torch_compiled.engine_file import (
    ARTIFACT,
    FORMAT,
    RECORD,
    WEIGHT_DTYPES,
    WEIGHTS,
    read_metadata,
    read_weights,
    weights_for_compile,
    write_weights,
)
from sd_unet_trt.trt_core.backends.torch_compiled.quantized import FORMATS, compute_dtype, quantized_weights
from sd_unet_trt.trt_core.backends.torch_compiled.recipe import (RECIPE_OPTIONS, int8_problem, quantized_module,
                                                                 recipe_of)
from sd_unet_trt.trt_core.export import sample_inputs
from sd_unet_trt.trt_core.precision import FLOAT, PRECISIONS, QUANTIZED
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.progress import CancelToken, ProgressFn, no_progress
from sd_unet_trt.trt_core.quantize import capability_problem
from sd_unet_trt.trt_core.verify import implementation_error, require_implementation

DTYPES = {name: PRECISIONS[name].dtype for name in FLOAT}  # a float engine computes in its precision
BUILD_OPTIONS = ("inductor", "channels_last", "attention", "fuse_projections", "int8_on_any_gpu", *RECIPE_OPTIONS)
# Inductor settings over its defaults; BuildRequest.options["inductor"] adds to them. The engine
# replays its own CUDA graphs, so Inductor's are off.
INDUCTOR_DEFAULTS: dict[str, Any] = {"triton.cudagraphs": False}


def varying_size_problem(profile: Profile) -> str | None:
    """Graphs with symbolic sizes from torch.export fail in Inductor's standalone compile (torch
    2.11-2.13: KeyError in tensorify_python_scalars), so an engine has one size; rows may vary."""
    varying = [name for name, rng in (("height", profile.height), ("width", profile.width), ("tokens", profile.tokens))
               if rng.min != rng.max]
    if varying:
        return (f"the torch backend builds one size per engine; this profile varies its {', '.join(varying)} "
                "(pick a static preset, one engine per size)")
    return None


def _static_shapes(profile: Profile, family: ModelFamily) -> dict[str, tuple[int, ...]]:
    """The one shape per input the engine is compiled for: the profile's size and its most rows
    (fewer rows are padded)."""
    problem = varying_size_problem(profile)
    if problem:
        raise ValueError(problem)
    return {name: shapes[2] for name, shapes in profile.input_shapes(family).items()}


def _module_for(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The module itself when it already lives on `device` in `dtype`; otherwise a converted copy
    (the caller's module is its reference for verification and must stay untouched)."""
    params = list(module.parameters())
    if all(p.device == device and p.dtype == dtype for p in params):
        return module
    return copy.deepcopy(module).to(device=device, dtype=dtype)


def _example_inputs(family: ModelFamily, shapes: dict[str, tuple[int, ...]], device: torch.device,
                    dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    rows, _, latent_h, latent_w = shapes["x"]
    return sample_inputs(family, rows, latent_h, latent_w, shapes["context"][1], dtype, device,
                         torch.Generator().manual_seed(0))


def _constants(exported: Any) -> tuple[list[str], list[torch.Tensor]]:
    """The exported graph's leading inputs that are weights, in the graph's order."""
    names, tensors = [], []
    for spec in exported.graph_signature.input_specs:
        kind = spec.kind.name
        if kind in ("PARAMETER", "BUFFER"):
            names.append(spec.target)
            tensors.append(exported.state_dict[spec.target].detach())
        elif kind == "CONSTANT_TENSOR":
            names.append(spec.target)
            tensors.append(exported.constants[spec.target].detach())
        elif kind != "USER_INPUT":
            raise ValueError(f"the exported UNet has an input of kind {kind}, which this backend cannot store")
    return names, tensors


def _quantized_index(index: list[dict[str, Any]]) -> dict[int, tuple[str, int]]:
    """Stored weight -> (format, its scales' position) for the quantized ones."""
    positions = {entry["name"]: i for i, entry in enumerate(index)}
    return {i: (entry["quantized"]["format"], positions[entry["quantized"]["scale"]])
            for i, entry in enumerate(index) if entry.get("quantized")}


class TorchCompiledBackend(Backend):
    name = "torch"
    file_suffix = ".torch.zip"
    build_rate = (30, 150)
    slow_on_cpu = True  # Inductor's C++ compile

    def availability(self) -> Availability:
        if not hasattr(torch._inductor, "standalone_compile"):
            return Availability(False, f"torch {torch.__version__} has no Inductor standalone compile; "
                                       "install torch 2.8 or newer")
        return Availability(True)

    def version(self) -> str:
        # the file format is part of it, so engines of an older format show as stale in the manifest
        cuda = torch.version.cuda or "cpu"
        return f"torch-{torch.__version__}+cuda-{cuda}+format-{FORMAT.rsplit('/', 1)[1]}"

    def device_arch(self, device: str = "cuda") -> str:
        if torch.device(device).type != "cuda":
            return "cpu"
        return arch_tag(torch.cuda.get_device_capability(torch.device(device)))

    def profile_problem(self, profile: Profile) -> str | None:
        return varying_size_problem(profile)

    def implementation_gate(self, engine: Any, path: Path, unet: torch.nn.Module, profile: Profile,
                            device: torch.device, what: str) -> dict[str, Any] | None:
        recipe = read_metadata(path).get("recipe")
        if recipe is None:
            return None
        reference = fake_quantized(unet, recipe, engine.dtype)
        try:
            mismatched = stored_mismatches(reference, engine.stored_weights())
            error = implementation_error(engine, reference, engine.family, profile, device)
        finally:
            del reference
        return require_implementation(error, engine.dtype, what, mismatched)

    def precision_problem(self, precision: str) -> str | None:
        if precision not in (*DTYPES, *FORMATS):  # quantized: the formats its kernels take
            return f"unknown precision {precision!r} (known: {', '.join((*DTYPES, *FORMATS))})"
        if precision in QUANTIZED and torch.cuda.is_available():
            capability = torch.cuda.get_device_capability()
            return capability_problem(precision, capability) or (int8_problem(capability) if precision == "int8" else None)
        return None

    def build(self, request: BuildRequest, out_path: Path, progress: ProgressFn = no_progress,
              cancel: CancelToken | None = None) -> BuildOutcome:
        self.require()
        cancel = cancel or CancelToken()
        if request.module is None:
            raise ValueError("the torch backend compiles the PyTorch UNet itself; the build request has no module")
        problem = self.precision_problem(request.precision)
        if problem and not (request.precision == "int8" and request.options.get("int8_on_any_gpu")):
            raise ValueError(problem)
        device = torch.device(request.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("a CUDA build needs a CUDA GPU; none is visible to torch")
        quantized = request.precision in QUANTIZED
        dtype = compute_dtype(request.precision, device) if quantized else DTYPES[request.precision]
        profile = request.profile.validate()
        family = request.family
        shapes = _static_shapes(profile, family)
        unknown = set(request.options) - set(BUILD_OPTIONS)
        if unknown:
            raise ValueError(f"unknown torch backend options: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(BUILD_OPTIONS)})")
        channels_last = bool(request.options.get("channels_last", True))
        fuse = bool(request.options.get("fuse_projections", True))
        preference = sdpa_preference(request.options.get("attention"))

        started = time.monotonic()
        progress("export: tracing the UNet with torch.export", 0.0)
        unet = _module_for(request.module, device, dtype)
        recipe = recipe_of(request.precision, request.options) if quantized else None
        computed, recipe = (quantized_module(unet, family, tuple(shapes["x"][2:]), recipe) if quantized
                            else (unet, None))
        module = family.call_module(fused_projections(computed) if fuse else computed).eval()
        sources, scaled = weight_sources(module, unet), quantized_weights(module)
        example = _example_inputs(family, shapes, device, dtype)
        with torch.no_grad(), sdpa_scope(preference):
            exported = torch.export.export(module, example, strict=False)
            attention = sdpa_choices(exported, device)
        del module, unet, computed
        graph_module = exported.graph_module
        export_seconds = time.monotonic() - started
        cancel.raise_if_cancelled()

        progress("compile: Inductor (minutes for a full-size UNet)", 0.2)
        weight_names, weights = _constants(exported)
        del exported
        weights = weights_for_compile(weights, channels_last)
        record = {"format": FORMAT, "family": family.name, "profile": profile.to_dict(), "precision": request.precision,
                  "compute_dtype": str(dtype).removeprefix("torch."),
                  "device": device.type, "torch": torch.__version__, "fuse_projections": fuse, "attention": attention,
                  **({"recipe": recipe} if recipe else {})}
        inductor = {**INDUCTOR_DEFAULTS, **request.options.get("inductor", {})}
        compile_started = time.monotonic()
        with torch.no_grad(), sdpa_scope(preference):
            artifact = torch._inductor.standalone_compile(
                graph_module, [*weights, *example], dynamic_shapes="from_example_inputs",
                options={"config_patches": inductor})
        compile_seconds = time.monotonic() - compile_started
        cancel.raise_if_cancelled()
        progress("write: engine file", 0.95)
        # named like the pipeline's temp files, so a killed build's leftovers are pruned
        with tempfile.TemporaryDirectory(prefix=f"{TEMP_MARK}{os.getpid()}-", dir=Path(out_path).parent) as tmp:
            artifact_path = Path(tmp) / ARTIFACT
            artifact.save(path=str(artifact_path), format="binary")
            # stored, not deflated: the weights don't compress and loading stays a plain read
            with zipfile.ZipFile(out_path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
                with archive.open(WEIGHTS, "w", force_zip64=True) as f:
                    record["weights"] = write_weights(f, weight_names, weights, sources, scaled)
                archive.write(artifact_path, ARTIFACT)
                archive.writestr(RECORD, json.dumps(record, indent=1))
        progress("compile: done", 1.0)
        return BuildOutcome(request.precision, {
            "export_seconds": round(export_seconds, 2), "compile_seconds": round(compile_seconds, 2),
            "inductor": inductor, "channels_last": channels_last, "compiled_rows": shapes["x"][0],
            "fuse_projections": fuse, "attention": attention,
            **({"quantized_layers": recipe["layers"], "quantized_weights": len(scaled),
                "recipe": {k: v for k, v in recipe.items() if k != "input_amax"}} if quantized else {}),
        })

    def load(self, path: Path, name: str, family: ModelFamily, profile: Profile, device: str = "cuda",
             cuda_graphs: bool = True) -> "TorchCompiledEngine":
        record = read_metadata(path)
        if record["torch"] != torch.__version__:
            raise EngineFileError(f"{path} was built with torch {record['torch']}; this is torch {torch.__version__}. "
                                  "Rebuild the engine")
        if record["family"] != family.name or Profile.from_dict(record["profile"]) != profile:
            raise EngineFileError(f"{path} holds a {record['family']} engine for {Profile.from_dict(record['profile']).label()}, "
                                  f"not {family.name} for {profile.label()}")
        target = torch.device(device)
        if record["device"] != target.type:
            raise EngineFileError(f"{path} was built for {record['device']}, cannot run on {target.type}")
        if target.type == "cuda" and not torch.cuda.is_available():
            raise EngineFileError(f"{path} is a CUDA engine and torch sees no CUDA GPU")
        device = torch.device("cuda", target.index if target.index is not None else torch.cuda.current_device()) \
            if target.type == "cuda" else target
        before = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
        try:
            with zipfile.ZipFile(path) as archive, tempfile.TemporaryDirectory() as tmp:
                archive.extract(ARTIFACT, tmp)
                artifact = torch._inductor.CompiledArtifact.load(path=str(Path(tmp) / ARTIFACT), format="binary")
            weights = read_weights(path, record["weights"], device)
            quantized = _quantized_index(record["weights"])
        except EngineFileError as e:
            raise EngineFileError(f"{path} could not be loaded: {e}") from e
        except (OSError, RuntimeError, KeyError, ValueError, TypeError, AssertionError, struct.error,
                zipfile.BadZipFile, pickle.UnpicklingError) as e:
            raise EngineFileError(f"{path} could not be loaded by torch {torch.__version__}: {type(e).__name__}: {e}") from e
        held = before - torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0

        def runner(*inputs: torch.Tensor) -> Any:
            return artifact(*weights, *inputs)

        dtype = WEIGHT_DTYPES.get(record.get("compute_dtype")) or DTYPES[record["precision"]]
        return TorchCompiledEngine(name, family, profile, runner, device, dtype,
                                   cuda_graphs=cuda_graphs and device.type == "cuda", weights_bytes=max(held, 0),
                                   weights=weights, sources=[entry.get("sources", []) for entry in record["weights"]],
                                   quantized=quantized, names=[entry["name"] for entry in record["weights"]])


