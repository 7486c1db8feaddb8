"""Running the built-in UNet for one call while an engine UNet is active.

On activation the WebUI moved the built-in UNet to the CPU. A fallback call runs the unpatched
ldm/sgm forward (sd_hijack.ldm_original_forward / sgm_original_forward) with the weights on the
GPU: brought there on the first fallback of a generation and kept until it ends (no moving back
and forth every step), unless that would break the VRAM budget. With --medvram the WebUI's own
hook has already put the UNet on the GPU; with --lowvram its block hooks move each block, so only
the small unhooked layers are placed here. Modules the lowvram code tracks are never moved here,
which would desynchronise its bookkeeping.
"""
from __future__ import annotations

import logging

import torch

from modules import devices, sd_hijack, shared

from sd_unet_trt.trt_core.hook_policy import EVICT_THEN_KEEP, PER_CALL, fallback_residency
from sd_unet_trt.trt_core.router import Router

log = logging.getLogger("sd_unet_trt")
LOWVRAM_HOOKED = ("input_blocks", "middle_block", "output_blocks", "time_embed")


def original_forward(unet: torch.nn.Module):
    """The unpatched forward of the UNet's own class (sgm for SDXL, ldm otherwise)."""
    return sd_hijack.sgm_original_forward if type(unet).__module__.startswith("sgm.") else sd_hijack.ldm_original_forward


def param_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def on_device(module: torch.nn.Module) -> bool:
    return all(p.device == devices.device for p in module.parameters())


def unhooked_children(unet: torch.nn.Module) -> list[torch.nn.Module]:
    return [child for name, child in unet.named_children() if name not in LOWVRAM_HOOKED]


class FallbackPlacement:
    """Where the built-in UNet's weights are for fallback calls, and giving them back."""

    def __init__(self) -> None:
        self.kept: list[torch.nn.Module] = []  # modules moved to the GPU and kept there until release()
        self.warned_per_call = False

    def run(self, unet: torch.nn.Module, router: Router | None, budget_bytes: int | None,
            x, timesteps, context, args, kwargs, forward=None) -> torch.Tensor:
        """`forward(unet, x, timesteps, context, *args, **kwargs)`: the built-in UNet's own by default;
        another extension's (sd-webui-controlnet's) where it replaced it."""
        forward = forward or original_forward(unet)
        sd_model = shared.sd_model
        if getattr(sd_model, "lowvram", False):
            if shared.cmd_opts.lowvram:  # blocks are placed by the WebUI's hooks; the rest is ours to place
                for child in unhooked_children(unet):
                    if not on_device(child):
                        child.to(devices.device)
                        self.kept.append(child)
            return forward(unet, x, timesteps, context, *args, **kwargs)
        if on_device(unet):
            return forward(unet, x, timesteps, context, *args, **kwargs)

        engines = router.loaded_bytes if router is not None else 0
        residency = fallback_residency(param_bytes(unet), engines, budget_bytes)
        if residency == EVICT_THEN_KEEP and router is not None:
            log.info("TensorRT: unloading engines to make room for the built-in UNet within the VRAM budget")
            router.close()
        if residency == PER_CALL and not self.warned_per_call:
            self.warned_per_call = True
            log.warning("TensorRT: the built-in UNet (%d MB) exceeds the VRAM budget; it is moved to the GPU "
                        "for each fallback call only", param_bytes(unet) // 2**20)
        unet.to(devices.device)
        try:
            return forward(unet, x, timesteps, context, *args, **kwargs)
        finally:
            if residency == PER_CALL:
                unet.to(devices.cpu)
                devices.torch_gc()
            elif unet not in self.kept:
                self.kept.append(unet)

    def release(self) -> None:
        """Back to where the WebUI put them on activation (the CPU)."""
        if not self.kept:
            return
        for module in self.kept:
            if not any(p.is_meta for p in module.parameters()):  # a model the WebUI unloaded stays unloaded
                module.to(devices.cpu)
        self.kept.clear()
        devices.torch_gc()


def restore_builtin(sd_model) -> None:
    """Undo the WebUI's move to the CPU for a model this engine UNet will not serve."""
    if sd_model is not None and not getattr(sd_model, "lowvram", False):
        sd_model.model.diffusion_model.to(devices.device)
