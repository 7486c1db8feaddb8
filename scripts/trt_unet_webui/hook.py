"""The UNet hook: an SdUnet that asks the router for every call and falls back per call.

Engines cover calls by shape (size, rows, context length, channels, y). A call they miss, a call
with inputs engines do not take (ControlNet's `control`, ...), an engine that fails, or a loaded
checkpoint other than the engines' own all run the built-in UNet for that call; the generation
never sees an exception from here.
"""
from __future__ import annotations

import logging

import torch

from modules import devices, sd_unet, shared

from sd_unet_trt.trt_core.hook_policy import engines_router, manifest_signature, short_reason, suggestion
from sd_unet_trt.trt_core.profiles import CallShape
from sd_unet_trt.scripts.trt_unet_webui import generation, settings
from sd_unet_trt.scripts.trt_unet_webui.fallback import FallbackPlacement, restore_builtin
from sd_unet_trt.scripts.trt_unet_webui.workspace import workspace

log = logging.getLogger("sd_unet_trt")


def loaded_sha256(sd_model) -> str | None:
    info = getattr(sd_model, "sd_checkpoint_info", None)
    return getattr(info, "sha256", None) if info is not None else None


def mismatch_reason(sd_model, sha256: str) -> str:
    """Why engines of checkpoint `sha256` must not serve the loaded model ("" when they may)."""
    if sd_model is None:
        return "no model is loaded"
    if getattr(sd_model, "is_sd3", False):
        return "SD3 models do not go through SD Unet hooks"
    loaded = loaded_sha256(sd_model)
    if loaded != sha256:
        return (f"the engines are for checkpoint {sha256[:10]}, the loaded one is "
                f"{(loaded or 'unhashed')[:10]}")
    return ""


class TrtUnetOption(sd_unet.SdUnetOption):
    def __init__(self, label: str, model_name: str, sha256: str):
        self.label = label
        self.model_name = model_name
        self.sha256 = sha256

    def create_unet(self) -> "TrtUnet":
        return TrtUnet(self.sha256)


class TrtUnet(sd_unet.SdUnet):
    def __init__(self, sha256: str):
        super().__init__()
        self.sha256 = sha256
        self.router = None
        self.signature = None
        self.device = devices.device
        self.mismatch = ""
        self.placement = FallbackPlacement()

    def activate(self) -> None:
        generation.on_end(self.placement.release)
        if self.check_model():
            self.refresh()

    def check_model(self) -> bool:
        """Whether the loaded model is the engines' checkpoint; if not, the built-in UNet goes back
        to where the WebUI keeps it without an SD Unet and runs every call."""
        was = self.mismatch
        self.mismatch = mismatch_reason(shared.sd_model, self.sha256)
        if self.mismatch and self.mismatch != was:
            log.warning("TensorRT: %s: engines stay unused, the built-in UNet runs every call", self.mismatch)
            restore_builtin(shared.sd_model)
        return not self.mismatch

    def refresh(self) -> None:
        """(Re)read the manifest when it changed: engines are loaded from it lazily, never rebuilt."""
        signature = manifest_signature(workspace())
        if self.router is not None and signature == self.signature:
            return
        if self.router is not None:
            self.router.close()
        self.device = devices.device
        try:
            self.router, left_out = engines_router(workspace(), self.sha256, self.device.type,
                                                   settings.vram_budget_bytes(), settings.preferred_backend(),
                                                   settings.cuda_graphs())
        except Exception as e:  # a broken manifest means no engines, not a broken WebUI
            log.warning("TensorRT: cannot read the engine manifest (%s); the built-in UNet runs every call", e)
            self.router, left_out = None, []
        self.signature = signature
        for item in left_out:
            log.info("TensorRT: engine %s not used: %s", item.entry.id, item.status.reason)

    def deactivate(self) -> None:
        generation.forget(self.placement.release)
        self.placement.release()
        if self.router is not None:
            self.router.close()
            self.router = None

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        report = generation.current()
        y = kwargs.get("y")
        extra = [k for k, v in kwargs.items() if k != "y" and v is not None]
        if self.mismatch:
            reason, detail = self.mismatch, ""
        elif args or extra:
            reason, detail = f"extra UNet inputs ({', '.join(extra) or f'{len(args)} positional'}) are not supported by engines", ""
        elif self.router is None:
            reason, detail = "no engines", ""
        else:
            try:
                result = self.router.run(x, timesteps, context, y)
                call = CallShape.of(x, context, y)
            except Exception as e:  # e.g. a call of a shape no SD UNet takes; the built-in UNet decides
                reason, detail = f"routing failed ({type(e).__name__}: {e})", ""
            else:
                if result.covered:
                    report.record_engine(result.engine)
                    return result.output
                reason, detail = short_reason(call), f"{suggestion(call)} would cover it. ({result.reason})"
        first = report.record_fallback(reason)
        policy = settings.fallback_policy()
        if first and policy != settings.FALLBACK_QUIET:
            log.warning("TensorRT: %s; the built-in UNet runs such calls in this generation. %s", reason, detail)
        if first and policy == settings.FALLBACK_INTERRUPT:
            shared.state.interrupt()
        return self.placement.run(shared.sd_model.model.diffusion_model, self.router, settings.vram_budget_bytes(),
                                  x, timesteps, context, args, kwargs)
