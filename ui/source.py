"""What the tab needs from its host: the WebUI (scripts/) or the standalone runner."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, TypeVar

from sd_unet_trt.errors import UserError
from sd_unet_trt.trt_core.unet_source import UNetSource
from sd_unet_trt.trt_core.workspace import Workspace

T = TypeVar("T")


class NoModelLoaded(UserError, RuntimeError):
    """No checkpoint is loaded in the host; the message tells the user what to do."""


@dataclass
class ModelSource:
    """What the tab needs from its host (the WebUI or the standalone runner)."""
    workspace: Workspace
    current_model: Callable[[], UNetSource]  # what a build would use; raises NoModelLoaded with a user-facing message
    device: str  # "cuda" or "cpu"
    run_exclusive: Callable[[Callable[[], T]], T]  # runs model-touching work under the host's lock (WebUI queue_lock)
    # the ControlNet models the host lists, by the name it shows (sd-webui-controlnet's list in the WebUI)
    controlnet_models: Callable[[], dict[str, Path]] = field(default=lambda: {})


def run_directly(work: Callable[[], T]) -> T:
    """run_exclusive for hosts with nothing else touching the model (the standalone runner)."""
    return work()
