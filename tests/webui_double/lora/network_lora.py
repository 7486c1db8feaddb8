"""extensions-builtin/Lora/network_lora.py (v1.10.1): a LoRA layer, up @ down (conventional, no
cp-decomposition), with its own forward for the functional mode."""
from __future__ import annotations

import torch

import network


class NetworkModuleLora(network.NetworkModule):
    def __init__(self, net: network.Network, weights: network.NetworkWeights):
        super().__init__(net, weights)
        self.up_model = self.create_module(weights.w, "lora_up.weight")
        self.down_model = self.create_module(weights.w, "lora_down.weight")
        self.mid_model = None
        self.dim = weights.w["lora_down.weight"].shape[0]

    def create_module(self, weights, key, none_ok=False):
        weight = weights.get(key)
        if weight is None and none_ok:
            return None
        if weight.dim() == 4:
            module = torch.nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], bias=False)
        else:
            module = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        with torch.no_grad():
            module.weight.copy_(weight)
        return module.requires_grad_(False)

    def calc_updown(self, orig_weight):
        up = self.up_model.weight.to(orig_weight.device)
        down = self.down_model.weight.to(orig_weight.device)
        output_shape = [up.size(0), down.size(1)] + list(down.shape[2:])
        updown = up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)
        return self.finalize_updown(updown, orig_weight, output_shape)

    def forward(self, x, y):
        return y + self.up_model(self.down_model(x)) * self.multiplier() * self.calc_scale()
