"""A backend compiled by PyTorch itself: torch.export + Inductor, replayed as CUDA graphs.

`build` exports the UNet at the profile's one size and compiles the exported graph ahead of time
with Inductor's standalone compile, whose artifact holds the generated kernels already compiled.
The engine file is one zip: the artifact, the weights in the requested precision (passed to the
compiled graph as inputs; one raw blob, stored uncompressed so `load` reads it straight from the
file onto the device in large chunks) and a record of what was built. `load` reads it
back in seconds without compiling. On a GPU the engine captures one CUDA graph per exact call
shape, so a step costs one graph launch instead of hundreds of kernel launches from Python.

Build options (BuildRequest.options): `channels_last` (default on), `attention` (the SDPA kernels
the compile may pick, in priority order; default: torch's own choice), `fuse_projections` (one
GEMM for an attention's q/k/v, default on: SD1.5 -3%, SDXL -1.7% per step, bench/NOTES.md), `inductor` (Inductor settings). The record keeps which
SDPA kernel each attention call was compiled to.

Convolution weights are compiled and stored channels-last (NHWC). Inductor runs the convolutions
channels-last anyway; given NCHW weights as graph inputs it would copy every one of them into
NHWC on every step (SD1.5: 1.2 GB of weights, ~2.4 GB of memory traffic per step). Inputs and
outputs stay ordinary contiguous tensors.

Each weight starts on a 256-byte boundary of the blob. Inductor clones every input whose address
is not 16-byte aligned on every call; tightly packed weights (safetensors' layout) cost SDXL 3 ms
of device-to-device copies per step and 3 GB of memory (bench/NOTES.md).

Why not AOTInductor's `.pt2` packages: on the project's GPU machine (torch 2.11, CUDA 13) loading
any AOTInductor package crashed the process (bench/aoti_probe.py, bench/NOTES.md).

The file is tied to the torch version and GPU architecture it was built with (the manifest
records both; `load` refuses a mismatch with a message that says to rebuild).
"""
from __future__ import annotations

import json
import os
import pickle
import struct
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.models.unet import CrossAttention
from sd_unet_trt.trt_core.atomic import TEMP_MARK
from sd_unet_trt.trt_core.backends.base import (
    Availability,
    Backend,
    BuildOutcome,
    BuildRequest,
    CancelToken,
    Engine,
    ProgressFn,
    no_progress,
)
from sd_unet_trt.trt_core.profiles import CallShape, Profile

FORMAT = "sd-unet-torch-inductor/2"
RECORD, ARTIFACT, WEIGHTS = "engine.json", "compiled.bin", "weights.bin"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# dtypes a stored weight may have (the UNet's parameters and buffers), by name in the record
WEIGHT_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16,
                                                             torch.float64, torch.int64, torch.int32, torch.bool)}
ALIGN = 256  # bytes; Inductor copies inputs that are not 16-byte aligned on every call
BUILD_OPTIONS = ("inductor", "channels_last", "attention", "fuse_projections")
# SDPA kernels by the names the `attention` option takes
SDPA_KERNELS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
READ_CHUNK = 64 << 20  # bytes per read from the engine file into pinned memory
# Inductor settings over its defaults; BuildRequest.options["inductor"] adds to them. The engine
# replays its own CUDA graphs, so Inductor's are off.
INDUCTOR_DEFAULTS: dict[str, Any] = {"triton.cudagraphs": False}
MAX_GRAPHS = 16  # CUDA graphs kept per engine (one per exact call shape), least recently used dropped


class EngineFileError(ValueError):
    """The file is not a torch backend engine this build of PyTorch can load."""


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


class _UNetCall(torch.nn.Module):
    """Fixes the call signature the export sees: (x, timesteps, context[, y]) -> eps / v."""

    def __init__(self, unet: torch.nn.Module, has_y: bool):
        super().__init__()
        self.unet, self.has_y = unet, has_y

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x, timesteps, context, y) if self.has_y else self.unet(x, timesteps, context)


def _module_for(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The module itself when it already lives on `device` in `dtype`; otherwise a converted copy
    (the caller's module is its reference for verification and must stay untouched)."""
    params = list(module.parameters())
    if all(p.device == device and p.dtype == dtype for p in params):
        return module
    import copy

    return copy.deepcopy(module).to(device=device, dtype=dtype)


class _FusedProjectionAttention(torch.nn.Module):
    """A CrossAttention whose q/k/v projections run as one GEMM (self-attention) or q plus one k/v
    GEMM (cross-attention): the same function, fewer and wider matrix products. Built once from a
    CrossAttention; shares its output projection."""

    def __init__(self, attn: CrossAttention):
        super().__init__()
        self.heads, self.inner = attn.heads, attn.to_q.out_features
        weights = (attn.to_q.weight, attn.to_k.weight, attn.to_v.weight)
        if any(layer.bias is not None for layer in (attn.to_q, attn.to_k, attn.to_v)):
            raise ValueError("fuse_projections expects q/k/v projections without bias (as in the SD UNets)")
        self.same_input = attn.to_q.in_features == attn.to_k.in_features
        with torch.no_grad():
            if self.same_input:  # one [q; k; v] weight serves both self- and cross-attention
                self.qkv = torch.nn.Parameter(torch.cat(weights), requires_grad=False)
            else:
                self.q = attn.to_q.weight
                self.kv = torch.nn.Parameter(torch.cat(weights[1:]), requires_grad=False)
        self.to_out = attn.to_out

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            q, k, v = F.linear(x, self.qkv).chunk(3, dim=-1)
        elif self.same_input:
            q = F.linear(x, self.qkv[:self.inner])
            k, v = F.linear(context, self.qkv[self.inner:]).chunk(2, dim=-1)
        else:
            q = F.linear(x, self.q)
            k, v = F.linear(context, self.kv).chunk(2, dim=-1)
        b = x.shape[0]
        q, k, v = (t.reshape(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1]))


def fused_projections(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with every CrossAttention replaced by a _FusedProjectionAttention. The caller's
    module is untouched: containers on the way to an attention are shallow copies, every other
    layer (and its weights) is shared, so only the concatenated q/k/v weights take new memory."""
    if isinstance(module, CrossAttention):
        return _FusedProjectionAttention(module)
    children = {name: fused_projections(child) for name, child in module.named_children()}
    if all(children[name] is child for name, child in module.named_children()):
        return module
    import copy

    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    for name, child in children.items():
        clone._modules[name] = child
    return clone


def _sdpa_preference(option: Any) -> list[SDPBackend] | None:
    """The `attention` build option: None (torch's choice) or kernel names in priority order."""
    if option is None:
        return None
    names = [option] if isinstance(option, str) else list(option)
    unknown = [n for n in names if n not in SDPA_KERNELS]
    if not names or unknown:
        raise ValueError(f"attention: unknown SDPA kernels {unknown or names} (known: {', '.join(SDPA_KERNELS)})")
    return [SDPA_KERNELS[n] for n in names]


def _sdpa_scope(preference: list[SDPBackend] | None) -> Any:
    """Where the compile picks the SDPA kernel: aten.scaled_dot_product_attention stays generic in
    the exported graph and is decomposed into one kernel's op when Inductor traces it, under the
    flags this context sets."""
    import contextlib

    if preference is None:
        return contextlib.nullcontext()
    return sdpa_kernel(preference, set_priority=True)


def _sdpa_choices(exported: Any, device: torch.device) -> dict[str, int]:
    """How many attention calls of the exported graph go to each SDPA kernel under the current
    flags: torch's own dispatch, asked on empty tensors of each call's shapes and strides."""
    names = {b.value: name.lower() for name, b in SDPBackend.__members__.items()}
    counts: dict[str, int] = {}
    for node in exported.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.scaled_dot_product_attention.default:
            q, k, v = (torch.empty_strided(a.meta["val"].shape, a.meta["val"].stride(), dtype=a.meta["val"].dtype,
                                           device=device) for a in node.args[:3])
            choice = names.get(int(torch._fused_sdp_choice(q, k, v)), "unknown")
            counts[choice] = counts.get(choice, 0) + 1
    return counts


def _example_inputs(family: ModelFamily, shapes: dict[str, tuple[int, ...]], device: torch.device,
                    dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shapes["x"], generator=generator).to(device, dtype)
    timesteps = torch.rand(shapes["timesteps"], generator=generator).mul(999).to(device)
    context = torch.randn(shapes["context"], generator=generator).to(device, dtype)
    if family.y_dim:
        return x, timesteps, context, torch.randn(shapes["y"], generator=generator).to(device, dtype)
    return x, timesteps, context


def read_metadata(path: Path) -> dict[str, Any]:
    """The engine's record, read without loading any code or weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"engine file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not {RECORD, ARTIFACT, WEIGHTS} <= names:
                raise EngineFileError(f"{path} is a zip file but not a torch backend engine "
                                      f"(it lacks {', '.join(sorted({RECORD, ARTIFACT, WEIGHTS} - names))})")
            record = json.loads(archive.read(RECORD))
    except zipfile.BadZipFile:
        raise EngineFileError(f"{path} is not a torch backend engine (not a zip file, or truncated)") from None
    except (KeyError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise EngineFileError(f"{path} has a damaged engine record: {e}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        found = record.get("format") if isinstance(record, dict) else None
        raise EngineFileError(f"{path} has engine format {found!r}; this extension reads {FORMAT!r}")
    return record


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    """NHWC layout built the way `_read_weights` rebuilds it (a contiguous NHWC tensor, viewed as
    NCHW), so the compiled graph's stride checks see the same strides at build and at load."""
    return weight.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def _weights_for_compile(weights: list[torch.Tensor], channels_last: bool) -> list[torch.Tensor]:
    if not channels_last:
        return [w.contiguous() for w in weights]
    return [_channels_last(w) if w.dim() == 4 else w.contiguous() for w in weights]


def _write_weights(f: Any, names: list[str], weights: list[torch.Tensor]) -> list[dict[str, Any]]:
    """Writes the weights back to back, each at a multiple of ALIGN bytes; 4-d channels-last weights
    as their NHWC bytes. Returns the index the record keeps (graph order)."""
    index, offset = [], 0
    for name, w in zip(names, weights):
        w = w.detach().to("cpu")
        nhwc = w.dim() == 4 and not w.is_contiguous()
        data = (w.permute(0, 2, 3, 1) if nhwc else w).contiguous()
        pad = -offset % ALIGN
        f.write(bytes(pad))
        offset += pad
        raw = data.reshape(-1).view(torch.uint8)
        f.write(memoryview(raw.numpy()))
        index.append({"name": name, "dtype": str(w.dtype).removeprefix("torch."), "shape": list(data.shape),
                      "offset": offset, "nhwc": nhwc})
        offset += raw.numel()
    return index


def _member_data_offset(f: Any, info: zipfile.ZipInfo) -> int:
    """Where a stored (uncompressed) zip member's bytes start in the zip file."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise EngineFileError(f"{info.filename} is compressed; the engine stores it uncompressed")
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise EngineFileError(f"damaged zip entry for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _read_into(f: Any, view: memoryview) -> None:
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise EngineFileError("the engine file ends inside its weights (truncated)")
        done += n


def _read_blob(f: Any, size: int, device: torch.device) -> torch.Tensor:
    """`size` bytes from the file's position into one uint8 tensor on `device`. On CUDA through two
    pinned buffers, so reading the next chunk overlaps copying the last one to the GPU."""
    blob = torch.empty(size, dtype=torch.uint8, device=device)
    if device.type != "cuda":
        _read_into(f, memoryview(blob.numpy()))
        return blob
    staging = [torch.empty(min(READ_CHUNK, size), dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    copied: list[torch.cuda.Event | None] = [None, None]
    stream = torch.cuda.current_stream(device)
    for i, start in enumerate(range(0, size, READ_CHUNK)):
        n = min(READ_CHUNK, size - start)
        buf, done = staging[i % 2], copied[i % 2]
        if done is not None:
            done.synchronize()  # the copy out of this buffer has finished
        _read_into(f, memoryview(buf.numpy())[:n])
        blob[start:start + n].copy_(buf[:n], non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
        copied[i % 2] = event
    stream.synchronize()
    return blob


def _read_weights(path: Path, index: list[dict[str, Any]], device: torch.device) -> list[torch.Tensor]:
    """The engine's weights in graph order, read straight from the zip onto `device` as views of one
    buffer (so each keeps the alignment of its offset)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(WEIGHTS)
    dtypes = [WEIGHT_DTYPES[entry["dtype"]] for entry in index]
    sizes = [torch.Size(entry["shape"]).numel() * dtype.itemsize for entry, dtype in zip(index, dtypes)]
    if max((entry["offset"] + size for entry, size in zip(index, sizes)), default=0) > info.file_size:
        raise EngineFileError("the engine file ends inside its weights (truncated)")
    with open(path, "rb") as f:
        f.seek(_member_data_offset(f, info))
        blob = _read_blob(f, info.file_size, device)
    weights = []
    for entry, dtype, size in zip(index, dtypes, sizes):
        tensor = blob[entry["offset"]:entry["offset"] + size].view(dtype).view(entry["shape"])
        weights.append(tensor.permute(0, 3, 1, 2) if entry["nhwc"] else tensor)
    return weights


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


class TorchCompiledBackend(Backend):
    name = "torch"
    file_suffix = ".torch.zip"

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
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        return f"sm_{major}{minor}"

    def profile_problem(self, profile: Profile) -> str | None:
        return varying_size_problem(profile)

    def build(self, request: BuildRequest, out_path: Path, progress: ProgressFn = no_progress,
              cancel: CancelToken | None = None) -> BuildOutcome:
        self.require()
        cancel = cancel or CancelToken()
        if request.module is None:
            raise ValueError("the torch backend compiles the PyTorch UNet itself; the build request has no module")
        if request.precision not in DTYPES:
            raise ValueError(f"unknown precision {request.precision!r} (known: {', '.join(DTYPES)})")
        device = torch.device(request.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("a CUDA build needs a CUDA GPU; none is visible to torch")
        dtype = DTYPES[request.precision]
        profile = request.profile.validate()
        family = request.family
        shapes = _static_shapes(profile, family)
        unknown = set(request.options) - set(BUILD_OPTIONS)
        if unknown:
            raise ValueError(f"unknown torch backend options: {', '.join(sorted(unknown))} "
                             f"(known: {', '.join(BUILD_OPTIONS)})")
        channels_last = bool(request.options.get("channels_last", True))
        fuse = bool(request.options.get("fuse_projections", True))
        preference = _sdpa_preference(request.options.get("attention"))

        started = time.monotonic()
        progress("export: tracing the UNet with torch.export", 0.0)
        unet = _module_for(request.module, device, dtype)
        module = _UNetCall(fused_projections(unet) if fuse else unet, family.y_dim is not None).eval()
        example = _example_inputs(family, shapes, device, dtype)
        with torch.no_grad(), _sdpa_scope(preference):
            exported = torch.export.export(module, example, strict=False)
            attention = _sdpa_choices(exported, device)
        del module, unet
        graph_module = exported.graph_module
        export_seconds = time.monotonic() - started
        cancel.raise_if_cancelled()

        progress("compile: Inductor (minutes for a full-size UNet)", 0.2)
        weight_names, weights = _constants(exported)
        del exported
        weights = _weights_for_compile(weights, channels_last)
        record = {"format": FORMAT, "family": family.name, "profile": profile.to_dict(), "precision": request.precision,
                  "device": device.type, "torch": torch.__version__, "fuse_projections": fuse, "attention": attention}
        inductor = {**INDUCTOR_DEFAULTS, **request.options.get("inductor", {})}
        compile_started = time.monotonic()
        with torch.no_grad(), _sdpa_scope(preference):
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
                    record["weights"] = _write_weights(f, weight_names, weights)
                archive.write(artifact_path, ARTIFACT)
                archive.writestr(RECORD, json.dumps(record, indent=1))
        progress("compile: done", 1.0)
        return BuildOutcome(request.precision, {
            "export_seconds": round(export_seconds, 2), "compile_seconds": round(compile_seconds, 2),
            "inductor": inductor, "channels_last": channels_last, "compiled_rows": shapes["x"][0],
            "fuse_projections": fuse, "attention": attention,
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
            weights = _read_weights(path, record["weights"], device)
        except EngineFileError as e:
            raise EngineFileError(f"{path} could not be loaded: {e}") from e
        except (OSError, RuntimeError, KeyError, ValueError, TypeError, AssertionError, struct.error,
                zipfile.BadZipFile, pickle.UnpicklingError) as e:
            raise EngineFileError(f"{path} could not be loaded by torch {torch.__version__}: {type(e).__name__}: {e}") from e
        held = before - torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0

        def runner(*inputs: torch.Tensor) -> Any:
            return artifact(*weights, *inputs)

        return TorchCompiledEngine(name, family, profile, runner, device, DTYPES[record["precision"]],
                                   cuda_graphs=cuda_graphs and device.type == "cuda", weights_bytes=max(held, 0))


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    output: torch.Tensor


class TorchCompiledEngine(Engine):
    """Runs calls inside its profile. The compiled graph takes the profile's most rows: a call with
    fewer is padded (by repeating its last row) and the padding cut off the output; rows are
    independent in the UNet, so the real rows are unaffected. On CUDA the graph is captured once
    and replayed. Outputs are contiguous in the caller's dtype and device."""

    def __init__(self, name: str, family: ModelFamily, profile: Profile, runner: Any, device: torch.device,
                 dtype: torch.dtype, cuda_graphs: bool, weights_bytes: int = 0):
        self.name, self.family, self.profile = name, family, profile
        self.device, self.dtype, self.cuda_graphs = device, dtype, cuda_graphs
        self._runner = runner
        self._weights_bytes = weights_bytes
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if cuda_graphs else None
        self._lock = threading.Lock()

    @property
    def memory_bytes(self) -> int:
        return self._weights_bytes

    @property
    def graph_shapes(self) -> list[tuple]:
        return list(self._graphs)

    def _inputs(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        call = CallShape.of(x, context, y)
        coverage = self.profile.covers(call, self.family)
        if not coverage or coverage.needs_split:
            reason = coverage.reason or f"{call.rows} rows is above the engine's maximum of {self.profile.rows.max}"
            raise ValueError(f"engine {self.name} cannot run {call.describe()}: {reason}")
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape [{x.shape[0]}], got {list(timesteps.shape)}")
        inputs = [x.to(self.device, self.dtype), timesteps.to(self.device, torch.float32), context.to(self.device, self.dtype)]
        if self.family.y_dim:
            inputs.append(y.to(self.device, self.dtype))
        pad = self.profile.rows.max - x.shape[0]
        if pad:
            inputs = [torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) for t in inputs]
        return tuple(t.contiguous() for t in inputs)

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                 y: torch.Tensor | None = None) -> torch.Tensor:
        inputs = self._inputs(x, timesteps, context, y)
        rows = x.shape[0]
        if not self.cuda_graphs:
            return self._run(inputs)[:rows].to(x.device, x.dtype, memory_format=torch.contiguous_format)
        with self._lock:
            key = tuple(tuple(t.shape) for t in inputs)
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._capture(key, inputs)
            else:
                self._graphs.move_to_end(key)
                for static, value in zip(entry.inputs, inputs):
                    static.copy_(value)
                entry.graph.replay()
            # the graph's output buffer is overwritten by the next replay: hand out a copy (the
            # compiled graph may leave its output channels-last)
            return entry.output[:rows].to(x.device, x.dtype, copy=True, memory_format=torch.contiguous_format)

    def _run(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = self._runner(*inputs)
        return out[0] if isinstance(out, (list, tuple)) else out

    def _capture(self, key: tuple, inputs: tuple[torch.Tensor, ...]) -> _Graph:
        static = tuple(t.clone() for t in inputs)
        # warm up off the capture: first runs load kernels and size workspaces, which capture forbids
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._run(static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self._run(static)
        graph.replay()  # capture records without computing: this replay computes the first call
        entry = _Graph(graph, static, output)
        self._graphs[key] = entry
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return entry

    def close(self) -> None:
        with self._lock:
            self._graphs.clear()
            self._runner = None
