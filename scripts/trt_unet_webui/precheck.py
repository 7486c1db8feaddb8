"""Before sampling: warn (never block) when the engines will not cover what was asked for."""
from __future__ import annotations

import logging

from modules import devices, prompt_parser, sd_hijack, sd_models, sd_unet, shared

from sd_unet_trt.trt_core.hook_policy import GenerationPlan, engines_router, expected_calls, precheck_message, uncovered_calls
from sd_unet_trt.scripts.trt_unet_webui.hook import TrtUnetOption
from sd_unet_trt.scripts.trt_unet_webui.workspace import workspace

log = logging.getLogger("sd_unet_trt")


def token_count(text: str) -> int:
    count, _ = sd_hijack.model_hijack.get_prompt_lengths(text)
    return count if isinstance(count, int) else 0


def hires_size(p) -> tuple[int, int] | None:
    """The second pass's size, as StableDiffusionProcessingTxt2Img.calculate_target_resolution has it."""
    if not getattr(p, "enable_hr", False):
        return None
    rx, ry = int(getattr(p, "hr_resize_x", 0) or 0), int(getattr(p, "hr_resize_y", 0) or 0)
    if rx == 0 and ry == 0:
        return int(p.width * p.hr_scale), int(p.height * p.hr_scale)
    if ry == 0:
        return rx, rx * p.height // p.width
    if rx == 0:
        return ry * p.width // p.height, ry
    return rx, ry


def generation_plan(p) -> GenerationPlan:
    prompts = p.all_prompts[:p.batch_size] or [p.prompt]
    negatives = p.all_negative_prompts[:p.batch_size] or [p.negative_prompt]
    subprompts = [[part for part in prompt_parser.re_AND.split(prompt)] for prompt in prompts]
    return GenerationPlan(
        width=p.width, height=p.height, batch=p.batch_size,
        cond_tokens=max(token_count(part) for parts in subprompts for part in parts),
        uncond_tokens=max(token_count(text) for text in negatives),
        subprompts=max(len(parts) for parts in subprompts),
        pad_cond_uncond=bool(getattr(shared.opts, "pad_cond_uncond", False)),
        batch_cond_uncond=bool(getattr(shared.opts, "batch_cond_uncond", True)),
        hires=hires_size(p))


def warn_if_uncovered(p) -> str | None:
    """The warning for this generation (also added to its comments), or None when all is covered
    or no engine UNet will be used."""
    option = sd_unet.get_unet_option()
    if not isinstance(option, TrtUnetOption):
        return None
    # the checkpoint this generation loads (a refiner of the last one may still be loaded now)
    selected = sd_models.checkpoint_aliases.get(shared.opts.sd_model_checkpoint)
    sha256 = getattr(selected, "sha256", None) or option.sha256
    router, _ = engines_router(workspace(), sha256, devices.device.type)
    if not router.records:
        return None
    missing = uncovered_calls(router, expected_calls(generation_plan(p), router.records[0].family))
    if not missing:
        return None
    message = precheck_message(missing)
    log.warning(message)
    p.comment(message)
    return message
