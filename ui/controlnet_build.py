"""Building an engine of a ControlNet model (issue 23), as the tab and the WebUI's API start it: the
model picked by the name its host lists (sd-webui-controlnet's list in the WebUI), one build at a
time through the same job runner as UNet builds."""
from __future__ import annotations

from sd_unet_trt.errors import UserError
from sd_unet_trt.trt_core import jobs
from sd_unet_trt.trt_core.backends import get_backend
from sd_unet_trt.trt_core.build_check import BuildChoice, build_problem
from sd_unet_trt.trt_core.controlnet.build import build_controlnet_engine, controlnet_build_problem
from sd_unet_trt.trt_core.profiles import Profile, shown
from sd_unet_trt.ui.source import ModelSource

NO_CONTROLNET = "None"  # the tab's choice for a UNet engine


class UnknownControlNet(UserError, ValueError):
    """A ControlNet name the host does not list."""


def controlnet_choices(source: ModelSource) -> list[str]:
    return [NO_CONTROLNET, *sorted(source.controlnet_models())]


def start_controlnet_build(source: ModelSource, name: str, profile: Profile, backend_name: str,
                           precision: str) -> tuple[jobs.JobStart, str]:
    """(the job's start, its title); UserError with one line for a request that cannot build."""
    models = source.controlnet_models()
    path = models.get(name) if isinstance(name, str) else None
    if path is None:
        listed = ", ".join(repr(n) for n in sorted(models)) or "none (put ControlNet models in models/ControlNet)"
        raise UnknownControlNet(f"no ControlNet model {shown(name)}; listed: {listed}")
    problem = build_problem(BuildChoice(backend_name, precision, profile))  # names the field of a bad choice
    backend = None if problem else get_backend(backend_name)
    problem = problem or controlnet_build_problem(backend, precision, profile)  # what ControlNet engines lack
    if problem:
        raise problem

    def work(progress, cancel):
        return source.run_exclusive(lambda: build_controlnet_engine(
            source.workspace, path, profile, backend, precision, progress=progress, device=source.device, cancel=cancel))

    title = f"ControlNet {name}: {backend_name} {precision}, {profile.label()}"
    return jobs.start(title, work), title
