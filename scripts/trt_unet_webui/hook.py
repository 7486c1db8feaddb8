"""The UNet hook: an SdUnet that asks the router for every call and falls back per call.

It serves whichever checkpoint is loaded (the base model, then its refiner) from that checkpoint's
own engines, and only with the weights the WebUI would compute with now: once per sampling pass
(and whenever the active networks change) it reads the live UNet (live_weights), gives the
engines every weight that differs from what they were built with (a LoRA merge, an in-place
change) through trt_core.weight_sync, or, when that cannot be reproduced, falls back for the
pass. A call no engine covers, a call with inputs engines do not take (extra arguments such as
Forge's `control`), an engine that fails, or a model without engines also runs the built-in UNet
for that call; the generation never sees an exception from here, and the infotext says what ran.
(sd-webui-controlnet replaces the UNet's forward itself; controlnet_bridge.py brings its calls
here with their residuals.)
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from modules import devices, sd_unet, shared

from sd_unet_trt.scripts.trt_unet_webui import forward_names, generation, live_weights, settings
from sd_unet_trt.scripts.trt_unet_webui.fallback import FallbackPlacement, restore_builtin
from sd_unet_trt.scripts.trt_unet_webui.served import served_first
from sd_unet_trt.scripts.trt_unet_webui.workspace import workspace
from sd_unet_trt.trt_core.hook_policy import engines_router, manifest_signature, short_reason, suggestion
from sd_unet_trt.trt_core.profiles import CallShape
from sd_unet_trt.trt_core.router import Router
from sd_unet_trt.trt_core.weight_sync import WeightSync

log = logging.getLogger("sd_unet_trt")
KEPT_CHECKPOINTS = 2  # a base model and its refiner


def loaded_sha256(sd_model) -> str | None:
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return getattr(info, "sha256", None) if info is not None else None


def model_problem(sd_model) -> str:
    """Why no engine can serve the loaded model ("" when engines may)."""
    if sd_model is None:
        return "no model is loaded"
    if getattr(sd_model, "is_sd3", False):
        return "SD3 models do not go through SD Unet hooks"
    if not loaded_sha256(sd_model):
        return "the loaded checkpoint is not hashed"
    return ""


def lora_functional() -> bool:
    return bool(getattr(shared.opts, "lora_functional", False))


@dataclass
class CheckpointEngines:
    """One checkpoint's engines: their router and the weights they hold."""
    name: str
    router: Router | None
    sync: WeightSync | None
    signature: object
    problem: str = ""  # non-empty: none of them can be used
    server_problem: str = ""  # non-empty: why the Triton server's engines are not among them (served.py)


def engines_signature() -> tuple:
    """What the engines of a checkpoint are read from: when it changes, they are read again."""
    return manifest_signature(workspace()), settings.triton_url()


def checkpoint_engines(sha256: str, name: str) -> CheckpointEngines:
    signature = engines_signature()
    try:
        router, left_out = engines_router(workspace(), sha256, devices.device.type, settings.vram_budget_bytes(),
                                          settings.preferred_backend(), settings.cuda_graphs())
    except Exception as e:  # a broken manifest means no engines, not a broken WebUI
        log.warning("TensorRT: cannot read the engine manifest (%s); the built-in UNet runs every call", e)
        return CheckpointEngines(name, None, None, signature, "the engine manifest cannot be read")
    for item in left_out:
        log.info("TensorRT: engine %s not used: %s", item.entry.id, item.status.reason)
    records, server_problem = served_first(router.records, sha256)  # the user asked for the server
    router.replace_records(records)
    if server_problem:
        log.warning("TensorRT: %s", server_problem)
    if not router.records:
        detail = f" ({server_problem})" if server_problem else ""
        return CheckpointEngines(name, None, None, signature, f"no engines for checkpoint {name}{detail}", server_problem)
    digest = router.records[0].weights
    try:
        record = workspace().weights_record(digest)
    except ValueError as e:
        return CheckpointEngines(name, None, None, signature, f"the engines' weights record is unusable ({e}); rebuild them")
    return CheckpointEngines(name, router, WeightSync(record, devices.device), signature, server_problem=server_problem)


class TrtUnetOption(sd_unet.SdUnetOption):
    def __init__(self, label: str, model_name: str, sha256: str):
        self.label = label
        self.model_name = model_name
        self.sha256 = sha256

    def create_unet(self) -> "TrtUnet":
        return TrtUnet()


class TrtUnet(sd_unet.SdUnet):
    def __init__(self):
        super().__init__()
        self.device = devices.device
        self.placement = FallbackPlacement()
        self.checkpoints: OrderedDict[str, CheckpointEngines] = OrderedDict()
        self.problem = ""  # why every call of this pass falls back ("" when engines may serve)
        self._synced: tuple | None = None  # (sha256, networks key) at the last sync
        self._resync = True
        self._builtin_only = threading.local()  # .reason: see builtin_only()

    def activate(self) -> None:
        generation.on_end(self.placement.release)
        self.request_sync()

    def deactivate(self) -> None:
        generation.forget(self.placement.release)
        self.placement.release()
        for engines in self.checkpoints.values():
            if engines.router is not None:
                engines.router.close()
        self.checkpoints.clear()

    def request_sync(self) -> None:
        """Read the live UNet again before the next call (a new pass, a model load)."""
        self._resync = True

    def unload(self, engine_id: str) -> None:
        for engines in self.checkpoints.values():
            if engines.router is not None:
                engines.router.unload(engine_id)

    def engines_for(self, sha256: str, name: str) -> CheckpointEngines:
        """Once per sampling pass: the checkpoint's engines, read again when what they are read from
        changed."""
        engines = self.checkpoints.get(sha256)
        # without local engines, a server that did not answer is asked again by reading them all again
        if engines is not None and (engines.signature != engines_signature()
                                    or (engines.router is None and engines.server_problem)):
            if engines.router is not None:
                engines.router.close()
            engines = None
        if engines is None:
            engines = self.checkpoints[sha256] = checkpoint_engines(sha256, name)
            while len(self.checkpoints) > KEPT_CHECKPOINTS:
                _, dropped = self.checkpoints.popitem(last=False)
                if dropped.router is not None:
                    dropped.router.close()
        elif engines.server_problem:  # asked again at every pass until it answers
            records, engines.server_problem = served_first(engines.router.records, sha256)
            engines.router.replace_records(records)
        self.checkpoints.move_to_end(sha256)
        return engines

    def _sync(self, sd_model, key: tuple) -> None:
        """Which engines may serve this pass, holding which weights; or why none may."""
        self._synced, self._resync = key, False
        self.problem = model_problem(sd_model)
        if not self.problem:
            engines = self.engines_for(key[0], sd_model.sd_checkpoint_info.model_name)
            self.problem = engines.problem
        if self.problem:  # no engine serves this model: its UNet goes where the WebUI keeps it without one
            restore_builtin(sd_model)
            return
        live = live_weights.describe(sd_model.model.diffusion_model, lora_functional())
        # a layer's patch, else a name the forward code resolves replaced (FreeU's th.cat), else hypernetworks
        self.problem = (live.problem or forward_names.problem()
                        or live_weights.hypernetworks_problem(getattr(shared, "loaded_hypernetworks", ())))
        if self.problem:
            return
        try:
            targets = engines.sync.update(live.base, live.keys, live.merge, engines.router.build_weights)
        except (KeyError, ValueError, RuntimeError) as e:
            self.problem = f"the engines cannot take the changed weights ({e})"
            return
        if targets is not None:
            unfit = engines.router.set_weights(targets, at_build=engines.sync.at_build)
            for engine_id, reason in unfit.items():
                log.info("TensorRT: engine %s cannot take the changed weights: %s", engine_id, reason)
        report = generation.current()
        if engines.server_problem:
            report.note(engines.server_problem)
        if live.networks:
            report.note(f"LoRA applied to the engines: {', '.join(live.networks)}")
        if engines.sync.changed:
            report.note(f"{len(engines.sync.changed)} UNet weights differ from the checkpoint file; "
                        "the engines use the live values")

    def prepare(self) -> CheckpointEngines | None:
        """Cheap per call; reads the live UNet again only when something may have changed."""
        sd_model = shared.sd_model
        key = (loaded_sha256(sd_model), live_weights.networks_key(lora_functional()))
        if self._resync or key != self._synced:
            try:
                self._sync(sd_model, key)
            except Exception as e:  # nothing here may break a generation
                log.exception("TensorRT: reading the live UNet failed")
                self.problem = f"reading the live UNet failed ({type(e).__name__}: {e})"
        return None if self.problem else self.checkpoints.get(key[0])

    def serve(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None,
              control: list[torch.Tensor] | None = None) -> tuple[torch.Tensor | None, str, str]:
        """The engine's output for this call, or None with the reason and the detail for the log."""
        engines = self.prepare()
        if self.problem:
            return None, self.problem, ""
        forced = getattr(self._builtin_only, "reason", "")
        if forced:
            return None, forced, ""
        try:
            result = engines.router.run(x, timesteps, context, y, control)
        except Exception as e:  # e.g. a call of a shape no SD UNet takes; the built-in UNet decides
            return None, f"routing failed ({type(e).__name__}: {e})", ""
        if result.covered:
            report = generation.current()
            report.record_engine(result.engine)
            for label in result.passed_over:
                report.note(f"{label} did not answer; other engines took its calls")
            return result.output, "", ""
        call = CallShape.of(x, context, y, control)  # only to explain a fallback (the router read it too)
        if result.unfit:
            return None, f"the engines cannot take the changed weights ({result.unfit})", result.reason
        if call.control is not None and not any(r.family.controlnet for r in engines.router.records):
            return None, "no engine of this checkpoint takes ControlNet's residuals", \
                "Build one with \"ControlNet inputs\" ticked in the TensorRT tab."
        return None, short_reason(call), f"{suggestion(call)} would cover it. ({result.reason})"

    def note_fallback(self, reason: str, detail: str) -> None:
        """Into the infotext, and the log once per generation (or stop it, as the setting says)."""
        first = generation.current().record_fallback(reason)
        policy = settings.fallback_policy()
        if first and policy != settings.FALLBACK_QUIET:
            log.warning("TensorRT: %s; the built-in UNet runs such calls in this generation. %s", reason, detail)
        if first and policy == settings.FALLBACK_INTERRUPT:
            shared.state.interrupt()

    @contextlib.contextmanager
    def builtin_only(self, reason: str):
        """Every call made meanwhile (by this thread) runs the built-in UNet, for `reason`."""
        previous, self._builtin_only.reason = getattr(self._builtin_only, "reason", ""), reason
        try:
            yield
        finally:
            self._builtin_only.reason = previous

    def run_builtin(self, x, timesteps, context, args=(), kwargs=None, forward=None) -> torch.Tensor:
        engines = self.checkpoints.get(loaded_sha256(shared.sd_model) or "")
        return self.placement.run(shared.sd_model.model.diffusion_model, engines.router if engines else None,
                                  settings.vram_budget_bytes(), x, timesteps, context, args, kwargs or {}, forward)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        y = kwargs.get("y")
        extra = [k for k, v in kwargs.items() if k != "y" and v is not None]
        if args or extra:
            output, reason, detail = None, (f"extra UNet inputs ({', '.join(extra) or f'{len(args)} positional'}) "
                                            "are not supported by engines"), ""
            self.prepare()
        else:
            output, reason, detail = self.serve(x, timesteps, context, y)
        if output is not None:
            return output
        self.note_fallback(self.problem or reason, detail)
        return self.run_builtin(x, timesteps, context, args, kwargs)


def active_unet() -> TrtUnet | None:
    current = sd_unet.current_unet
    return current if isinstance(current, TrtUnet) else None
