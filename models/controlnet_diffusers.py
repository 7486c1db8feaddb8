"""A ControlNet saved in diffusers' layout (`ControlNetModel.save_pretrained`: conv_in, down_blocks,
controlnet_cond_embedding, controlnet_down_blocks, ...) renamed to the original layout that
models/controlnet.py reads, as sd-webui-controlnet loads such a file too. Only names change: the
tensors are the same, and inside a ResBlock or a transformer the two layouts differ only in the
ResBlock's layer names (RESNET)."""
from __future__ import annotations

import re
from typing import Mapping

import torch

MARKER = "controlnet_cond_embedding.conv_in.weight"  # present in every diffusers ControlNet
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
PLAIN = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
         "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
         "conv_in": "input_blocks.0.0", "controlnet_mid_block": "middle_block_out.0",
         "controlnet_cond_embedding.conv_in": "input_hint_block.0"}


def is_diffusers_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return MARKER in state_dict


def _resnet(rest: str) -> str:
    layer, _, tail = rest.partition(".")
    return f"{RESNET.get(layer, layer)}.{tail}"


def to_original_layout(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The tensors under the original layout's names, and the names that have no counterpart there
    (a ControlNet Union's extra layers, say): the caller refuses a file with any."""
    # input blocks per level: its ResBlocks, then a Downsample (none after the last level)
    per_level = 1 + len({k.split(".")[3] for k in state_dict if k.startswith("down_blocks.0.resnets.")})
    hint_blocks = len({k.split(".")[2] for k in state_dict if k.startswith("controlnet_cond_embedding.blocks.")})
    out, unknown = {}, []
    for key, value in state_dict.items():
        name, _, param = key.rpartition(".")
        if name in PLAIN:
            out[f"{PLAIN[name]}.{param}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            level, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
            block = per_level * level + index + 1
            out[f"input_blocks.{block}.0.{_resnet(rest)}" if kind == "resnets" else f"input_blocks.{block}.1.{rest}"] = value
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            out[f"input_blocks.{per_level * (int(m[1]) + 1)}.0.op.{m[2]}"] = value
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            out[f"middle_block.1.{m[1]}"] = value
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
            out[f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.+)", key):
            out[f"input_hint_block.{2 * int(m[1]) + 2}.{m[2]}"] = value
        elif m := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(.+)", key):
            out[f"input_hint_block.{2 * hint_blocks + 2}.{m[1]}"] = value
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(.+)", key):
            out[f"zero_convs.{m[1]}.0.{m[2]}"] = value
        else:
            unknown.append(key)
    return out, unknown
