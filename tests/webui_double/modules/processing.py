"""modules/processing.py (v1.10.1) reduced to what reaches the UNet, in the real order:

    process_images: scripts.before_process
    process_images_inner: setup prompts -> scripts.process(p) -> sd_unet.apply_unet()
        per batch: reload_model_weights (the selected checkpoint, e.g. after a refiner) ->
        extra networks parsed out of the prompts and activated (LoRA) -> scripts.process_batch ->
        sample: per step the refiner switch (reload_model_weights(refiner), at refiner_switch_at
        of the last pass) -> the cfg_denoiser callbacks -> the UNet calls; with hires fix,
        is_hr_pass, the networks activated again and scripts.before_hr before the second pass
        -> infotexts
    -> scripts.postprocess(p, processed)

The sampler makes the UNet calls of docs/DESIGN.md's table: all cond rows first (one per AND
sub-prompt per image), then B uncond rows; one call when cond and uncond contexts have the same
length (or pad_cond_uncond pads them), else a cond call and an uncond call; calls of B rows with
batch_cond_uncond off; cond-only steps; a second pass at the hires size; 9 channels for inpainting
models (latent + mask + masked image); y for models with one. The latent update is a fixed CFG
Euler-like step, deterministic given the seed, so the images of two runs can be compared.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from modules import devices, extra_networks, script_callbacks, sd_hijack, sd_models, sd_unet, shared

# The sampler and ldm/sgm's model are stand-ins (the WebUI's come from k-diffusion, ldm and sgm);
# ORDER records what happened, cond_only_steps and extra_kwargs stand in for settings and other
# extensions that change the UNet's calls.
DOUBLE_ONLY = {"ORDER", "CONTEXT_CHUNK", "DiffusionWrapper", "SdModel", "Denoiser", "embed", "chunks_of", "unet_call",
               "denoise", "sample_pass", "sample", "StableDiffusionProcessing.cond_only_steps",
               "StableDiffusionProcessing.extra_kwargs"}
ORDER: list[str] = []  # what happened, in order: process, apply_unet, process_batch, unet, postprocess
CONTEXT_CHUNK = 77


class DiffusionWrapper(torch.nn.Module):
    """ldm's DiffusionWrapper / sgm's OpenAIWrapper: how the UNet is called."""

    def __init__(self, diffusion_model, sgm: bool):
        super().__init__()
        self.diffusion_model = diffusion_model
        self.sgm = sgm

    def forward(self, x, t, c_concat=None, c_crossattn=None, y=None, **kwargs):
        if c_concat is not None:
            x = torch.cat([x, *c_concat], dim=1)
        if self.sgm:
            return self.diffusion_model(x, timesteps=t, context=c_crossattn, y=y, **kwargs)
        return self.diffusion_model(x, t, context=c_crossattn)


class SdModel(torch.nn.Module):
    def __init__(self, unet, checkpoint_info, sgm: bool = False, parameterization: str = "eps"):
        super().__init__()
        self.model = DiffusionWrapper(unet, sgm)
        self.sd_checkpoint_info = checkpoint_info
        self.sd_model_checkpoint = checkpoint_info.filename
        self.used_config = "sgm" if sgm else "ldm"
        self.lowvram = False
        self.is_sd3 = False
        self.is_sdxl = sgm
        self.parameterization = parameterization

    def apply_model(self, x, t, cond, c_concat=None, y=None, **kwargs):
        return self.model(x, t, c_concat=c_concat, c_crossattn=cond, y=y, **kwargs)


class Denoiser:
    """The part of k-diffusion's CFGDenoiser the cfg_denoiser callbacks see."""

    def __init__(self, p):
        self.p = p


def embed(text: str, dim: int, chunks: int) -> torch.Tensor:
    """A deterministic stand-in for the text encoder: [chunks * 77, dim]."""
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return torch.randn(chunks * CONTEXT_CHUNK, dim, generator=torch.Generator().manual_seed(seed)) * 0.5


def chunks_of(text: str) -> int:
    return max(1, -(-sd_hijack.token_count(text) // 75))


@dataclass(repr=False)
class StableDiffusionProcessing:
    prompt: str = ""
    negative_prompt: str = ""
    seed: int = -1
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    extra_generation_params: dict = None
    comments: dict = None
    scripts: object = None
    script_args: tuple = ()
    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    disable_extra_networks: bool = False
    refiner_checkpoint: str = None
    refiner_switch_at: float = None
    is_hr_pass: bool = field(default=False, init=False)
    sd_model_name: str = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)
    cond_only_steps: tuple = ()  # steps that skip uncond (negative guidance min sigma / skip early cond)
    extra_kwargs: dict = None  # what another extension adds to UNet calls (ControlNet's control)

    def __post_init__(self):
        self.extra_generation_params = self.extra_generation_params or {}
        self.comments = {}
        self.extra_kwargs = self.extra_kwargs or {}
        self.refiner_checkpoint_info = None

    def comment(self, text):
        self.comments[text] = 1

    @property
    def sd_model(self):
        return shared.sd_model


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_resize_x: int = 0
    hr_resize_y: int = 0


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images = images_list
        self.infotexts = infotexts or [info] * len(images_list)
        self.comments = "".join(f"{comment}\n" for comment in p.comments)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    if index is None:
        index = position_in_batch + iteration * p.batch_size
    generation_params = {"Steps": p.steps, "Seed": all_seeds[index], "Size": f"{p.width}x{p.height}",
                         **p.extra_generation_params}
    for key, value in generation_params.items():
        if callable(value):
            generation_params[key] = value(**locals())
    return ", ".join(f"{k}: {v}" for k, v in generation_params.items() if v is not None)


def unet_call(sd_model, x, t, ctx, c_concat, y, extra):
    ORDER.append("unet")
    return sd_model.apply_model(x, t, ctx, c_concat=c_concat, y=y, **extra)


def denoise(p, sd_model, x, t, conds, unconds, image_cond, ys, cond_only):
    """One step's eps for each image: the rows and calls of docs/DESIGN.md's table."""
    subprompts = [len(c) for c in conds]
    cond_rows = [c for parts in conds for c in parts]
    x_cond = torch.cat([x[i:i + 1].expand(n, -1, -1, -1) for i, n in enumerate(subprompts)])
    ic_cond = None if image_cond is None else torch.cat([image_cond[i:i + 1].expand(n, -1, -1, -1) for i, n in enumerate(subprompts)])
    y_cond = None if ys is None else torch.cat([ys[i:i + 1].expand(n, -1) for i, n in enumerate(subprompts)])
    dim = cond_rows[0].shape[-1]

    def pad(tensors, length):
        empty = embed("", dim, 1)
        return [torch.cat([c] + [empty] * ((length - c.shape[0]) // CONTEXT_CHUNK)) for c in tensors]

    def call(xs, ctxs, ics, yv):
        ctx = torch.stack(ctxs).to(devices.device, devices.dtype_unet)
        tt = torch.full((xs.shape[0],), float(t), dtype=xs.dtype, device=xs.device)
        return unet_call(sd_model, xs, tt, ctx, None if ics is None else [ics], yv, p.extra_kwargs)

    longest = max(c.shape[0] for c in cond_rows + ([] if cond_only else unconds))
    if shared.opts.pad_cond_uncond or cond_only:
        cond_rows = pad(cond_rows, longest)
        unconds = pad(unconds, longest)
    cond_rows = pad(cond_rows, max(c.shape[0] for c in cond_rows))
    unconds = pad(unconds, max(c.shape[0] for c in unconds))
    if cond_only:
        out_cond, out_uncond = call(x_cond, cond_rows, ic_cond, y_cond), None
    elif not shared.opts.batch_cond_uncond:
        b = x.shape[0]
        outs = [call(x_cond[i:i + b], cond_rows[i:i + b], None if ic_cond is None else ic_cond[i:i + b],
                     None if y_cond is None else y_cond[i:i + b]) for i in range(0, len(cond_rows), b)]
        out_cond, out_uncond = torch.cat(outs), call(x, unconds, image_cond, ys)
    elif cond_rows[0].shape[0] == unconds[0].shape[0]:
        both = call(torch.cat([x_cond, x]), cond_rows + unconds,
                    None if image_cond is None else torch.cat([ic_cond, image_cond]),
                    None if ys is None else torch.cat([y_cond, ys]))
        out_cond, out_uncond = both[:len(cond_rows)], both[len(cond_rows):]
    else:
        out_cond = call(x_cond, cond_rows, ic_cond, y_cond)
        out_uncond = call(x, unconds, image_cond, ys)
    eps_cond = torch.stack([part.mean(0) for part in torch.split(out_cond, subprompts)])
    return eps_cond if out_uncond is None else out_uncond + p.cfg_scale * (eps_cond - out_uncond)


def sample_pass(p, x, steps, image_cond, seed, last_pass):
    unet = shared.sd_model.model.diffusion_model
    dim, y_dim = unet.config.context_dim, unet.config.adm_in_channels
    prompts, negatives = p.prompts, p.negative_prompts
    conds = [[embed(part.strip(), dim, chunks_of(part)) for part in prompt.split(" AND ")] for prompt in prompts]
    unconds = [embed(neg, dim, chunks_of(neg)) for neg in negatives]
    ys = None if not y_dim else torch.randn(len(prompts), y_dim, generator=torch.Generator().manual_seed(seed)).to(devices.device, devices.dtype_unet)
    for step in range(steps):
        refiner = p.refiner_checkpoint_info
        if last_pass and refiner is not None and step / steps >= p.refiner_switch_at \
                and shared.sd_model.sd_checkpoint_info.filename != refiner.filename:
            sd_models.reload_model_weights(info=refiner)  # sd_samplers_common.apply_refiner
        t = 999.0 * (1 - step / steps)
        script_callbacks.cfg_denoiser_callback(script_callbacks.CFGDenoiserParams(
            x, image_cond, t, step, steps, conds, unconds, Denoiser(p)))
        eps = denoise(p, shared.sd_model, x, t, conds, unconds, image_cond, ys, step in p.cond_only_steps)
        x = x - 0.2 * eps.to(x.dtype)
    return x


def sample(p, seed):
    sd_model = shared.sd_model
    unet = sd_model.model.diffusion_model
    g = torch.Generator().manual_seed(seed)
    h, w = p.height // 8, p.width // 8
    x = torch.randn(p.batch_size, 4, h, w, generator=g).to(devices.device, devices.dtype_unet)

    def image_cond(height, width):
        if unet.config.in_channels == 4:
            return None
        return torch.randn(p.batch_size, unet.config.in_channels - 4, height, width, generator=g).to(x)

    hires = getattr(p, "enable_hr", False)
    x = sample_pass(p, x, p.steps, image_cond(h, w), seed, last_pass=not hires)
    if hires:
        hr_w, hr_h = (int(p.width * p.hr_scale), int(p.height * p.hr_scale)) if not (p.hr_resize_x or p.hr_resize_y) else (p.hr_resize_x, p.hr_resize_y)
        x = torch.nn.functional.interpolate(x.float(), size=(hr_h // 8, hr_w // 8), mode="nearest").to(x)
        p.is_hr_pass = True
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        if p.scripts is not None:
            p.scripts.before_hr(p)
        x = sample_pass(p, x, max(1, p.steps // 2), image_cond(hr_h // 8, hr_w // 8), seed, last_pass=True)
        p.is_hr_pass = False
    return x


def process_images(p):
    if p.scripts is not None:
        p.scripts.before_process(p)
    return process_images_inner(p)


def process_images_inner(p):
    if isinstance(p.prompt, str):
        p.all_prompts = [p.prompt] * (p.batch_size * p.n_iter)
        p.all_negative_prompts = [p.negative_prompt] * (p.batch_size * p.n_iter)
    p.all_seeds = [p.seed + i for i in range(p.batch_size * p.n_iter)]
    p.sd_model_name = shared.sd_model.sd_checkpoint_info.name_for_extra
    if p.refiner_checkpoint not in (None, "", "None", "none"):
        p.refiner_checkpoint_info = sd_models.checkpoint_aliases.get(p.refiner_checkpoint)
    if p.scripts is not None:
        ORDER.append("process")
        p.scripts.process(p)
    with torch.no_grad():
        ORDER.append("apply_unet")
        sd_unet.apply_unet()
        images, infotexts = [], []
        for n in range(p.n_iter):
            sd_models.reload_model_weights()  # a refiner loaded by the last batch goes
            p.prompts = p.all_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.negative_prompts = p.all_negative_prompts[n * p.batch_size:(n + 1) * p.batch_size]
            p.prompts, p.extra_network_data = extra_networks.parse_prompts(p.prompts)
            if not p.disable_extra_networks:
                extra_networks.activate(p, p.extra_network_data)
            if p.scripts is not None:
                ORDER.append("process_batch")
                p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=[p.seed], subseeds=[p.seed])
            latents = sample(p, p.seed + n)
            images += list(latents.float().cpu())
            infotexts += [create_infotext(p, p.all_prompts, p.all_seeds, p.all_seeds, iteration=n, position_in_batch=i)
                          for i in range(p.batch_size)]
    processed = Processed(p, images, p.seed, infotexts=infotexts)
    if p.scripts is not None:
        ORDER.append("postprocess")
        p.scripts.postprocess(p, processed)
    return processed
