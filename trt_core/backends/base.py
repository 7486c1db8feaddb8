"""The one interface every backend implements (after Polygraphy's runners and lazy loaders).

A Backend turns an export into an engine file (`build`) and an engine file into an Engine
(`load`). An Engine runs one UNet call on tensors. Backends import their heavy libraries lazily,
so listing them never fails on a machine that lacks one.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from sd_unet_trt.errors import UserError
from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.precision import NAMES, QUANTIZED
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.progress import CancelToken, ProgressFn, no_progress


class BackendUnavailable(UserError, RuntimeError):
    """The backend's library or hardware is missing; the message says what to install."""


class WeightsUnsupported(RuntimeError):
    """An engine cannot run with the weights asked of it; the message says why. It is unchanged."""


class EngineFileError(ValueError):
    """The file is not an engine this backend can load here: not one of ours, damaged, or built for
    other shapes; the message says which. (A stale engine, built for another GPU or library, is the
    TensorRT backend's StaleEngineError.)"""


class EngineUnavailable(RuntimeError):
    """This call cannot run on the engine now (a remote server down or slow); the call falls back
    and the engine stays in use for the next one."""


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""  # why not, and how to fix it


@dataclass
class BuildRequest:
    """What a build starts from: the verified ONNX and, for backends that compile from
    PyTorch, the module itself."""
    onnx_path: Path
    family: ModelFamily
    profile: Profile
    precision: str = "fp16"  # a name in trt_core/precision.py that the backend builds
    module: Optional[torch.nn.Module] = None
    device: str = "cuda"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class BuildOutcome:
    """What a build reports back to the manifest, besides the file it wrote."""
    precision: str
    details: dict[str, Any] = field(default_factory=dict)


class Engine(ABC):
    """One loaded engine: runs calls inside its profile."""

    name: str
    family: ModelFamily
    profile: Profile

    @abstractmethod
    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                 y: torch.Tensor | None = None, control: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The UNet's output for these rows, in x's dtype on x's device. `control`: ControlNet's
        residuals and T2I-Adapter's features (models.unet.UNetConfig.control_shapes), for an engine
        whose family has control inputs (zeros go in without them). An engine of a ControlNet
        (trt_core/controlnet/family.py) takes the control image as `control` and returns the list of
        its family's `output_names`."""

    @property
    def memory_bytes(self) -> int:
        """Device memory held while loaded (weights and workspace) for this engine alone, for the
        router's budget."""
        return 0

    @property
    def shared_memory(self) -> tuple[object, int] | None:
        """Device memory this engine uses together with other engines (one buffer they take turns
        on), beyond memory_bytes: (the buffer's key, bytes this engine needs of it). The router counts
        each buffer once, at the largest need of its loaded engines."""
        return None

    def set_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Run with these values for the UNet weights they name (state-dict names) from now on; the
        others keep theirs. Raises WeightsUnsupported, leaving the engine as it was, when it cannot."""
        raise WeightsUnsupported(f"{type(self).__name__} cannot change its weights")

    def weights_of(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The values it holds for these weights, on its device, where it can read them (views: copy
        before changing); the names it cannot read are left out."""
        return {}

    def close(self) -> None:
        """Release everything the engine holds; it is not called again afterwards."""


def arch_tag(capability: tuple[int, int]) -> str:
    """"sm_89" for compute capability 8.9: what `device_arch` says for a CUDA GPU, whichever backend."""
    return f"sm_{capability[0]}{capability[1]}"


def control_inputs(family: ModelFamily, x: torch.Tensor, control: list[torch.Tensor] | None,
                   engine: str) -> list[torch.Tensor]:
    """The tensors an engine of `family` takes for its control inputs (ControlNet's residuals,
    T2I-Adapter's features): the given ones,
    zeros when none are given (the same engine serves generations without ControlNet), nothing for
    a family without them. A ValueError for residuals the engine cannot take."""
    if control is not None and not family.controlnet:
        raise ValueError(f"engine {engine} has no ControlNet inputs")
    if not family.controlnet:
        return []
    shapes = family.control_shapes(x.shape[0], x.shape[2], x.shape[3])
    if control is None:
        return [torch.zeros(shape, dtype=x.dtype, device=x.device) for shape in shapes]
    if [tuple(c.shape) for c in control] != shapes:
        raise ValueError(f"engine {engine} takes control inputs shaped {shapes}, "
                         f"got {[tuple(c.shape) for c in control]}")
    return list(control)


class Backend(ABC):
    name: str  # "tensorrt", "onnxruntime", "torch"
    file_suffix: str  # of engine files, e.g. ".trt"
    quantizes_onnx = False  # INT8/FP8 engines are built from an ONNX export with Q/DQ nodes
    # build seconds before this machine has timed any (trt_core/estimate.py): (fixed cost, seconds
    # per billion parameters), export and verification included
    build_rate: tuple[float, float]
    # compiling takes minutes even for the tiny UNet on a small CPU: best_backend (the CLI's `build`,
    # the tab's default) and the demo take it there only when it is named
    slow_on_cpu = False
    # keyword arguments the constructor takes, with their defaults (backends.get_backend); not changed
    instance_options: Mapping[str, Any] = {}

    @abstractmethod
    def availability(self) -> Availability:
        """Whether this machine can build and run this backend, and if not, why."""

    @abstractmethod
    def version(self) -> str:
        """The library version an engine is tied to (recorded in the manifest)."""

    def profile_problem(self, profile: Profile) -> str | None:
        """Why this backend cannot build an engine for `profile`, or None when it can."""
        return None

    def precision_problem(self, precision: str) -> str | None:
        """Why this backend cannot build in `precision`, or None when it can."""
        if precision not in NAMES:
            return f"unknown precision {precision!r} (known: {', '.join(NAMES)})"
        if precision in QUANTIZED:
            return f"{precision} engines are built by the torch and TensorRT backends"
        return None

    def can_run(self, device: str = "cuda") -> str:
        """Why its engines cannot run on `device` here ("" when they can). A backend may build
        engines for other machines (TensorRT for RTX builds without a GPU)."""
        return ""

    def file_problem(self, path: Path, device: str = "cuda") -> str:
        """Why the engine file cannot serve on `device` here ("" when it can), beyond what the
        manifest records; read cheaply (a header), never by loading the engine."""
        return ""

    def device_arch(self, device: str = "cuda") -> str:
        """The hardware an engine is tied to, e.g. "sm_89" or "cpu"."""
        return "any"

    def implementation_gate(self, engine: "Engine", path: Path, unet: torch.nn.Module, profile: Profile,
                            device: torch.device, what: str) -> dict[str, Any] | None:
        """For a quantized engine whose recipe this backend can rebuild in PyTorch: the engine held
        tightly to that recipe (its figures for the manifest, or VerificationError); else None."""
        return None

    @abstractmethod
    def build(self, request: BuildRequest, out_path: Path, progress: ProgressFn = no_progress,
              cancel: CancelToken | None = None) -> BuildOutcome:
        """Write the engine for request.profile to out_path (the caller makes it atomic)."""

    @abstractmethod
    def load(self, path: Path, name: str, family: ModelFamily, profile: Profile, device: str = "cuda") -> Engine:
        """Read an engine file written by `build`; raise a clear error for a foreign file."""

    def require(self) -> None:
        status = self.availability()
        if not status.available:
            raise BackendUnavailable(f"{self.name}: {status.reason}")
