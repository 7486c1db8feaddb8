"""Which TensorRT library runs here: TensorRT (`tensorrt`, 10.x and 11.x) or TensorRT for RTX
(`tensorrt_rtx`, 1.x), and for which GPU.

TensorRT for RTX is NVIDIA's TensorRT for the GPUs users own (GeForce and RTX workstation cards):
a smaller install, engines built ahead of time without a GPU for a set of compute capabilities,
kernels compiled just in time on the user's GPU. It does not run on data-center chips (Hopper,
data-center Blackwell) or Turing; full TensorRT does. Both are strongly typed: an engine's
precision is the export's (fp16 or fp32 ONNX). One library serves a process: Polygraphy, which
loads networks and configures builds for both, picks its module once.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import torch

from sd_unet_trt.trt_core.interrupts import raise_if_interrupted

TENSORRT, TENSORRT_RTX = "tensorrt", "tensorrt_rtx"
AUTOMATIC = "Automatic"
SUPPORTED_MAJORS = {TENSORRT: (10, 11), TENSORRT_RTX: (1,)}
LABELS = {TENSORRT: "TensorRT", TENSORRT_RTX: "TensorRT for RTX"}
# GPUs TensorRT for RTX runs on (its runtime refused 9.0 listing "8.0 8.6 8.9 12.0 12.1"; 1.7.1)
RTX_RUNS_ON = {(8, 0), (8, 6), (8, 7), (8, 9), (12, 0), (12, 1)}
FULL_MIN_CAPABILITY = (7, 5)  # TensorRT 10 and 11 support Turing and newer
POLYGRAPHY = "polygraphy>=0.50"  # 0.50 added TensorRT for RTX


@dataclass(frozen=True)
class Library:
    module: ModuleType
    name: str  # TENSORRT or TENSORRT_RTX

    @property
    def version(self) -> str:
        return str(getattr(self.module, "__version__", "?"))

    @property
    def major(self) -> int:
        try:
            return int(self.version.split(".")[0])
        except ValueError:
            return -1

    @property
    def rtx(self) -> bool:
        return self.name == TENSORRT_RTX

    @property
    def label(self) -> str:
        return f"{LABELS[self.name]} {self.version}"

    @property
    def tag(self) -> str:
        """What the manifest records as the backend's version: library and version."""
        return f"{self.name} {self.version}"

    def supported(self) -> bool:
        return self.major in SUPPORTED_MAJORS[self.name]

    def runs_on(self, capability: tuple[int, int] | None) -> bool:
        if capability is None:
            return False
        return capability in RTX_RUNS_ON if self.rtx else capability >= FULL_MIN_CAPABILITY

    def builds_without_gpu(self) -> bool:
        return self.rtx


def import_library(name: str) -> Library | None:
    """The library if it imports, also from its bindings wheel alone: the `tensorrt` and
    `tensorrt_rtx` modules come from source packages that only re-export the bindings, and
    install.py installs the bindings and libraries wheels."""
    modules = [name, f"{name}_bindings"]
    for module_name in modules:
        try:
            return Library(importlib.import_module(module_name), name)
        except Exception as e:  # ImportError, or a broken install raising OSError on a missing .so
            raise_if_interrupted(e)
            continue
    return None


def preferred_library(capability: tuple[int, int] | None) -> str:
    """The library for this GPU: TensorRT for RTX where it runs, or with no GPU at all (it builds
    without one); full TensorRT on data-center chips and Turing."""
    if capability is None or capability in RTX_RUNS_ON:
        return TENSORRT_RTX
    return TENSORRT


def pip_requirements(name: str, cuda_version: str | None) -> list[str]:
    """The wheels of a library for PyTorch's CUDA major (cu12/cu13), and Polygraphy; [] when PyTorch
    has no CUDA 12 or 13. The bindings and libraries wheels, not the source package that wraps them."""
    major = (cuda_version or "").split(".")[0]
    if major not in ("12", "13"):
        return []
    if name == TENSORRT_RTX:
        return [f"tensorrt-rtx-cu{major}-bindings>=1.0,<2", f"tensorrt-rtx-cu{major}-libs>=1.0,<2", POLYGRAPHY]
    return [f"tensorrt-cu{major}-bindings>=10.0,<12", f"tensorrt-cu{major}-libs>=10.0,<12", POLYGRAPHY]


def install_hint(name: str) -> str:
    requirements = pip_requirements(name, torch.version.cuda or "13.0")
    return "pip install " + " ".join(f'"{r}"' for r in requirements)


_preference = AUTOMATIC


def set_preference(name: str) -> None:
    """The library the user asked for (the WebUI setting): AUTOMATIC, TENSORRT or TENSORRT_RTX.
    Backends made afterwards use it; one made earlier keeps its library (Polygraphy serves one per
    process, so a change takes a restart)."""
    global _preference
    if name not in (AUTOMATIC, *LABELS):
        raise ValueError(f"unknown TensorRT library {name!r}: {AUTOMATIC}, {', '.join(LABELS)}")
    _preference = name


def preference() -> str:
    return _preference


@dataclass(frozen=True)
class Choice:
    library: Library | None
    reason: str = ""  # why none, or why not the preferred one


def choose_library(capability: tuple[int, int] | None, preference: str = AUTOMATIC,
                   importer=import_library) -> Choice:
    """The library this process uses: the one the setting names, else the preferred one for this
    GPU if it is installed, else the other if it can serve here."""
    wanted = preference if preference in LABELS else preferred_library(capability)
    order = [wanted] + ([n for n in LABELS if n != wanted] if preference not in LABELS else [])
    reasons = []
    for name in order:
        library = importer(name)
        if library is None:
            reasons.append(f"{LABELS[name]} is not installed ({install_hint(name)})")
            continue
        if not library.supported():
            reasons.append(f"{library.label} is installed; this extension supports {LABELS[name]} "
                           f"{'/'.join(f'{m}.x' for m in SUPPORTED_MAJORS[name])}")
            continue
        if capability is None and not library.builds_without_gpu():
            reasons.append(f"{library.label} needs an NVIDIA GPU to build engines (TensorRT for RTX builds without "
                           f"one: {install_hint(TENSORRT_RTX)})")
            continue
        if capability is not None and not library.runs_on(capability):
            reasons.append(f"{library.label} does not run on this GPU (compute capability "
                           f"{capability[0]}.{capability[1]})")
            continue
        return Choice(library, "; ".join(reasons))
    return Choice(None, "; ".join(reasons))
