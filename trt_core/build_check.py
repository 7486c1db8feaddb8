"""One check of what a user asked to build, for every way in: the tab, the HTTP API, and the CLI
through `pipeline.build_engine`. A request is refused before any work, with the same words
wherever it came from."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sd_unet_trt.trt_core.backends import REGISTRY, get_backend
from sd_unet_trt.trt_core.backends.base import Backend, BackendUnavailable
from sd_unet_trt.trt_core.precision import NAMES as PRECISION_NAMES
from sd_unet_trt.trt_core.profiles import Profile, ProfileError, shown


@dataclass(frozen=True)
class BuildChoice:
    """What a user asked to build. The values come from a form or a request body, so they may
    be anything; `build_problem` says what is wrong with them."""
    backend: Any  # a backend's name
    precision: Any
    profile: Profile
    controlnet: Any = False


def unknown_precision(precision: Any) -> ProfileError | None:
    """A precision that is no name of the table, said as the form's field error."""
    if not isinstance(precision, str) or precision not in PRECISION_NAMES:
        return ProfileError({"precision": f"must be one of {', '.join(PRECISION_NAMES)}, got {shown(precision)}"})
    return None


def build_problem(choice: BuildChoice, backend: Backend | None = None) -> ProfileError | BackendUnavailable | None:
    """Why this build would be refused (None when it would not), as the error to raise or to show:
    a ProfileError names the field. `backend` is the instance that will build when the caller
    already has one; otherwise the process's instance of that name."""
    if backend is None:
        if not isinstance(choice.backend, str) or choice.backend not in REGISTRY:  # a list is unhashable
            return ProfileError({"backend": f"unknown backend {shown(choice.backend)}; "
                                            f"the backends are {', '.join(REGISTRY)}"})
        try:
            backend = get_backend(choice.backend)
        except ImportError as e:  # its module is missing or broken: a reason, never a traceback
            return BackendUnavailable(f"backend {choice.backend} is not available here: {e}")
    status = backend.availability()
    if not status.available:
        return BackendUnavailable(f"backend {backend.name} is not available here: {status.reason}")
    problem = unknown_precision(choice.precision)
    if problem:
        return problem
    for field, problem in (("precision", backend.precision_problem(choice.precision)),
                           ("profile", backend.profile_problem(choice.profile))):
        if problem:
            return ProfileError({field: problem})
    if not isinstance(choice.controlnet, bool):
        return ProfileError({"controlnet": f"must be true or false, got {shown(choice.controlnet)}"})
    return None
