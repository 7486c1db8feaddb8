"""The export form's logic, free of Gradio: presets, field parsing and validation, choices."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.backends import all_backends
from sd_unet_trt.trt_core.backends.base import Backend
from sd_unet_trt.trt_core.precision import NAMES, QUANTIZED
from sd_unet_trt.trt_core.precision import PRECISIONS as PRECISION_TABLE
from sd_unet_trt.trt_core.profiles import Preset, Profile, ProfileError, Range, presets_for, whole_number

# (field, label, unit) in the order the editor shows them; each has min / opt / max.
DIMENSIONS = (("batch", "Batch size", "images"), ("height", "Height", "px"),
              ("width", "Width", "px"), ("tokens", "Prompt tokens", "tokens"))
ENDS = ("min", "opt", "max")
FIELD_COUNT = len(DIMENSIONS) * len(ENDS)  # the editor's number fields, dimension by dimension
PRECISIONS = NAMES  # the form offers every precision; int8/fp8: torch and TensorRT backends
# What a user should know before choosing a quantized precision (docs/BENCHMARKS.md has the figures).
PRECISION_NOTES = {
    precision: (f"{PRECISION_TABLE[precision].label}: held to a whole 20-step denoising loop against the PyTorch UNet before it is "
                "registered; smaller weights, but on an H200 the torch backend's quantized engines measured slower "
                "than fp16 (SDXL: int8 38.4, fp8 33.8, fp16 31.3 ms/step)")
    for precision in QUANTIZED}


def presets(family: ModelFamily) -> list[Preset]:
    """Only presets the family can use, the one-click default first."""
    usable = []
    for preset in presets_for(family):
        try:
            usable.append(Preset(preset.name, preset.profile.validate()))
        except ProfileError:
            continue
    return usable


def preset_named(family: ModelFamily, name: str | None) -> Preset:
    options = presets(family)
    return next((p for p in options if p.name == name), options[0])


def profile_fields(profile: Profile) -> list[int]:
    """The FIELD_COUNT editor values (min, opt, max per dimension) of a profile."""
    return [getattr(getattr(profile, field), end) for field, _, _ in DIMENSIONS for end in ENDS]


@dataclass
class FormCheck:
    """The profile the fields describe, or a message per dimension that is wrong."""
    profile: Profile | None
    problems: dict[str, str]

    @property
    def ok(self) -> bool:
        return self.profile is not None

    def message(self, field: str) -> str:
        return self.problems.get(field, "")

    def summary(self) -> str:
        labels = {f: label for f, label, _ in DIMENSIONS}
        return "; ".join(f"{labels.get(f, f)}: {m}" for f, m in self.problems.items())


def check_fields(values: Sequence[Any]) -> FormCheck:
    """Validate the FIELD_COUNT editor values; messages use the rules of trt_core.profiles."""
    if len(values) != FIELD_COUNT:
        raise ValueError(f"expected {FIELD_COUNT} values, got {len(values)}")
    ranges, problems = {}, {}
    for i, (field, _, _) in enumerate(DIMENSIONS):
        numbers = [whole_number(v) for v in values[len(ENDS) * i:len(ENDS) * (i + 1)]]
        if any(n is None for n in numbers):
            problems[field] = "min, opt and max must be whole numbers"
        else:
            ranges[field] = Range(*numbers)
    if problems:
        return FormCheck(None, problems)
    profile = Profile(**ranges)
    problems = profile.problems()
    return FormCheck(None if problems else profile, problems)


@dataclass(frozen=True)
class BackendChoice:
    name: str
    available: bool
    reason: str = ""


def backend_choices(backends: Sequence[Backend] | None = None) -> list[BackendChoice]:
    """Every known backend in preference order (TensorRT first), with why a missing one is missing."""
    out = []
    for backend in all_backends() if backends is None else backends:
        try:
            status = backend.availability()
        except Exception as e:  # a broken install must not break the tab
            out.append(BackendChoice(backend.name, False, f"{type(e).__name__}: {e}"))
            continue
        out.append(BackendChoice(backend.name, status.available, status.reason))
    return out


def default_precision(device: str) -> str:
    """FP16 on a GPU (what engines are for); FP32 on the CPU, where FP16 kernels are few and slow."""
    return "fp16" if device == "cuda" else "fp32"
