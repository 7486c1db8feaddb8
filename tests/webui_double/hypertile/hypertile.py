"""extensions-builtin/hypertile/hypertile.py (v1.10.1): how the WebUI's Hypertile wraps the UNet's
self-attention layers and switches the wrappers on and off.

Modelled exactly: `hypertile_hook_model` wraps the layers named in DEPTH_LAYERS the first time it
is called with enable=True (setting `__webui_hypertile_params` on each and replacing its `forward`
by a functools.wraps wrapper), never unwraps them, and later calls only set each wrapper's
`params.enabled` (and its tile size); a wrapper switched off calls the wrapped forward unchanged.
Not modelled: the tiling itself. The double's wrapper, switched on, runs the wrapped forward when
the latent fits one tile (as the real one does) and raises otherwise; the tests stay below 128 px.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache, wraps
from typing import Callable

from torch import nn

DOUBLE_ONLY = {"fits_one_tile"}


@dataclass
class HypertileParams:
    depth = 0
    layer_name = ""
    tile_size: int = 0
    swap_size: int = 0
    aspect_ratio: float = 1.0
    forward = None
    enabled = False


DEPTH_LAYERS = {  # the SD 1.5 U-Net (ldm) names of the real table
    0: ["input_blocks.1.1.transformer_blocks.0.attn1", "input_blocks.2.1.transformer_blocks.0.attn1",
        "output_blocks.9.1.transformer_blocks.0.attn1", "output_blocks.10.1.transformer_blocks.0.attn1",
        "output_blocks.11.1.transformer_blocks.0.attn1"],
    1: ["input_blocks.4.1.transformer_blocks.0.attn1", "input_blocks.5.1.transformer_blocks.0.attn1",
        "output_blocks.6.1.transformer_blocks.0.attn1", "output_blocks.7.1.transformer_blocks.0.attn1",
        "output_blocks.8.1.transformer_blocks.0.attn1"],
    2: ["input_blocks.7.1.transformer_blocks.0.attn1", "input_blocks.8.1.transformer_blocks.0.attn1",
        "output_blocks.3.1.transformer_blocks.0.attn1", "output_blocks.4.1.transformer_blocks.0.attn1",
        "output_blocks.5.1.transformer_blocks.0.attn1"],
    3: ["middle_block.1.transformer_blocks.0.attn1"],
}
DEPTH_LAYERS_XL = {0: [], 1: [], 2: [], 3: []}


@cache
def largest_tile_size_available(width: int, height: int) -> int:
    """The largest power of 2 dividing both sides (the real one)."""
    gcd = math.gcd(width, height)
    largest_tile_size_available = 1
    while gcd % (largest_tile_size_available * 2) == 0:
        largest_tile_size_available *= 2
    return largest_tile_size_available


def fits_one_tile(params: HypertileParams, tokens: int) -> bool:
    """The real wrapper splits a square latent of `tokens` positions into nh x nw tiles, nh = nw = 1
    whenever its side is at most the tile side (max(128, tile_size) // 8 * 2**depth)."""
    side = round(tokens ** 0.5)
    return side <= max(128, params.tile_size) // 8 * 2 ** params.depth


def self_attn_forward(params: HypertileParams, scale_depth=True) -> Callable:

    @wraps(params.forward)
    def wrapper(*args, **kwargs):
        if not params.enabled:
            return params.forward(*args, **kwargs)
        if not fits_one_tile(params, args[0].size(1)):
            raise NotImplementedError("the WebUI double does not tile attention (keep the latent within one tile)")
        return params.forward(*args, **kwargs)

    return wrapper


def hypertile_hook_model(model: nn.Module, width, height, *, enable=False, tile_size_max=128, swap_size=1, max_depth=3, is_sdxl=False):
    hypertile_layers = getattr(model, "__webui_hypertile_layers", None)
    if hypertile_layers is None:
        if not enable:
            return

        hypertile_layers = {}
        layers = DEPTH_LAYERS_XL if is_sdxl else DEPTH_LAYERS

        for depth in range(4):
            for layer_name, module in model.named_modules():
                if any(layer_name.endswith(try_name) for try_name in layers[depth]):
                    params = HypertileParams()
                    module.__webui_hypertile_params = params
                    params.forward = module.forward
                    params.depth = depth
                    params.layer_name = layer_name
                    module.forward = self_attn_forward(params)

                    hypertile_layers[layer_name] = 1

        model.__webui_hypertile_layers = hypertile_layers

    aspect_ratio = width / height
    tile_size = min(largest_tile_size_available(width, height), tile_size_max)

    for layer_name, module in model.named_modules():
        if layer_name in hypertile_layers:
            params = module.__webui_hypertile_params

            params.tile_size = tile_size
            params.swap_size = swap_size
            params.aspect_ratio = aspect_ratio
            params.enabled = enable and params.depth <= max_depth
