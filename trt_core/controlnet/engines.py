"""Serving a ControlNet's calls from its engines: the UNet's router (trt_core/router.py) over the
ControlNet file's ready engines, so coverage, row chunks, lazy loading, the memory budget and
setting aside an engine that fails are the UNet's. The control image goes in as the router's
control input and the residuals come back as its output (trt_core/controlnet/family.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from sd_unet_trt.trt_core.backends import get_backend
from sd_unet_trt.trt_core.backends.base import Engine
from sd_unet_trt.trt_core.catalog import built_file, catalog, engine_label
from sd_unet_trt.trt_core.controlnet.family import family_of_entry, is_controlnet_entry
from sd_unet_trt.trt_core.manifest import EngineEntry
from sd_unet_trt.trt_core.profiles import CallShape
from sd_unet_trt.trt_core.router import EngineRecord, Router
from sd_unet_trt.trt_core.workspace import Workspace


@dataclass
class ControlNetEngines:
    """The engines of one ControlNet file. `run` and `why_not` never raise for a call they cannot
    serve: None and the reason, so the caller runs the ControlNet in PyTorch."""
    sha256: str
    router: Router
    left_out: dict[str, str]  # engines of this file that are not ready here: id -> why

    def run(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
            y: torch.Tensor | None = None) -> list[torch.Tensor] | None:
        """The residuals, as cldm's ControlNet.forward returns them (x's dtype and device); None
        when no engine covers these shapes or the engines that did failed."""
        return self.router.run(x, timesteps, context, y, control=[hint]).output

    def run_or_reason(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                      y: torch.Tensor | None = None) -> tuple[list[torch.Tensor] | None, str]:
        """`run`, and when it gives nothing, the reason of that very attempt (an engine may have
        failed during it)."""
        result = self.router.run(x, timesteps, context, y, control=[hint])
        return result.output, "" if result.covered else _controlnet_reason(result.reason)

    def why_not(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None) -> str:
        """One line: why no engine would serve this call ("" when one would)."""
        plan = self.router.plan(CallShape.of(x, context, y, [hint]))
        return "" if plan.covered else _controlnet_reason(plan.reason)

    def close(self) -> None:
        self.router.close()


def _controlnet_reason(reason: str) -> str:
    return "no ControlNet engine" + reason.removeprefix("no engine") if reason.startswith("no engine") else reason


def controlnet_engines(workspace: Workspace, controlnet_sha256: str, device: str = "cuda",
                       memory_budget_bytes: int | None = None,
                       backend_options: dict | None = None) -> ControlNetEngines | None:
    """The ControlNet file's engines that are ready here, loaded on first use by the process's
    backend instances; None when it has no engine at all (ready or not)."""
    manifest = workspace.manifest()
    items = [i for i in catalog(workspace, device)
             if is_controlnet_entry(i.entry) and i.entry.checkpoint.sha256 == controlnet_sha256]
    if not items:
        return None

    def loader(entry: EngineEntry) -> Callable[[], Engine]:
        def load() -> Engine:
            backend = get_backend(entry.backend, **(backend_options or {}))
            return backend.load(built_file(manifest, entry), entry.id, family_of_entry(entry), entry.profile,
                                device=device)
        return load
    records = [EngineRecord(i.entry.id, family_of_entry(i.entry), i.entry.profile, loader(i.entry),
                            label=engine_label(i.entry), weights=i.entry.checkpoint.weights)
               for i in items if i.status.ready]
    left_out = {i.entry.id: i.status.reason for i in items if not i.status.ready}
    return ControlNetEngines(controlnet_sha256, Router(records, memory_budget_bytes), left_out)
