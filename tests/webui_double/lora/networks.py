"""extensions-builtin/Lora/networks.py (v1.10.1), for LoRA files with kohya's ldm keys
(`lora_unet_<layer path with _>.lora_up.weight` / `.lora_down.weight` / `.alpha`):

- load_networks fills `loaded_networks` (name, te/unet multipliers, layer modules);
- in place (the default), each layer's forward first calls network_apply_weights: when the wanted
  set of networks is not the one its weights hold, it restores the weights from the backup it
  keeps on the CPU (taken the first time a network is applied) and adds every network's
  calc_updown in turn, each seeing the weight the previous one produced;
- with the `lora_functional` option, the layer's weights are restored and each network's output
  is added to the layer's (with no network loaded the weights run as they are).

install() patches torch's Linear and Conv2d forward the way the extension's lora_patches does,
registers `<lora:...>` and the `lora_functional` option; uninstall() undoes it.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import torch
from safetensors.torch import load_file

import network
import network_lora
from modules import devices, extra_networks, shared

DOUBLE_ONLY = {"install", "uninstall"}
available_networks = {}
networks_in_memory = {}
loaded_networks = []
originals = None


def assign_network_names_to_compvis_modules(sd_model):
    network_layer_mapping = {}
    for name, module in sd_model.model.named_modules():
        network_name = name.replace(".", "_")
        network_layer_mapping[network_name] = module
        module.network_layer_name = network_name
    sd_model.network_layer_mapping = network_layer_mapping


def load_network(name, network_on_disk):
    net = network.Network(name, network_on_disk)
    net.mtime = os.path.getmtime(network_on_disk.filename)
    if not hasattr(shared.sd_model, "network_layer_mapping"):
        assign_network_names_to_compvis_modules(shared.sd_model)
    matched = {}
    for key_network, weight in load_file(network_on_disk.filename).items():
        key_network_without_network_parts, _, network_part = key_network.partition(".")
        key = key_network_without_network_parts.replace("lora_unet", "diffusion_model")
        sd_module = shared.sd_model.network_layer_mapping.get(key)
        if sd_module is None:
            continue
        weights = matched.setdefault(key, network.NetworkWeights(key_network, key, {}, sd_module))
        weights.w[network_part] = weight
    for key, weights in matched.items():
        net.modules[key] = network_lora.NetworkModuleLora(net, weights)
    return net


def load_networks(names, te_multipliers=None, unet_multipliers=None, dyn_dims=None):
    assign_network_names_to_compvis_modules(shared.sd_model)
    loaded_networks.clear()
    for i, name in enumerate(names):
        on_disk = available_networks.get(name)
        if on_disk is None:
            continue
        net = networks_in_memory.get(name)
        if net is None or os.path.getmtime(on_disk.filename) > net.mtime:
            net = networks_in_memory[name] = load_network(name, on_disk)
        net.mentioned_name = name
        net.te_multiplier = te_multipliers[i] if te_multipliers else 1.0
        net.unet_multiplier = unet_multipliers[i] if unet_multipliers else 1.0
        net.dyn_dim = dyn_dims[i] if dyn_dims else 1.0
        loaded_networks.append(net)


def store_weights_backup(weight):
    return None if weight is None else weight.to(devices.cpu, copy=True)


def restore_weights_backup(obj, field, weight):
    if weight is None:
        setattr(obj, field, None)
        return
    getattr(obj, field).copy_(weight)


def network_restore_weights_from_backup(self):
    weights_backup = getattr(self, "network_weights_backup", None)
    bias_backup = getattr(self, "network_bias_backup", None)
    if weights_backup is None and bias_backup is None:
        return
    with torch.no_grad():
        if weights_backup is not None:
            restore_weights_backup(self, 'weight', weights_backup)
        restore_weights_backup(self, 'bias', bias_backup)


def network_apply_weights(self):
    network_layer_name = getattr(self, 'network_layer_name', None)
    if network_layer_name is None:
        return
    current_names = getattr(self, "network_current_names", ())
    wanted_names = tuple((x.name, x.te_multiplier, x.unet_multiplier, x.dyn_dim) for x in loaded_networks)
    if getattr(self, "network_weights_backup", None) is None and wanted_names != ():
        if current_names != ():
            raise RuntimeError(f"{network_layer_name} - no backup weights found and current weights are not unchanged")
        self.network_weights_backup = store_weights_backup(self.weight)
        self.network_bias_backup = store_weights_backup(self.bias)
    if current_names != wanted_names:
        network_restore_weights_from_backup(self)
        for net in loaded_networks:
            module = net.modules.get(network_layer_name, None)
            if module is None:
                continue
            with torch.no_grad():
                weight = self.weight
                updown, ex_bias = module.calc_updown(weight)
                self.weight.copy_((weight.to(dtype=updown.dtype) + updown).to(dtype=self.weight.dtype))
        self.network_current_names = wanted_names


def network_forward(org_module, input, original_forward):
    if len(loaded_networks) == 0:
        return original_forward(org_module, input)
    network_restore_weights_from_backup(org_module)
    network_reset_cached_weight(org_module)
    y = original_forward(org_module, input)
    for lora in loaded_networks:
        module = lora.modules.get(getattr(org_module, 'network_layer_name', None), None)
        if module is not None:
            y = module.forward(input, y)
    return y


def network_reset_cached_weight(self):
    self.network_current_names = ()
    self.network_weights_backup = None
    self.network_bias_backup = None


def network_Linear_forward(self, input):
    if shared.opts.lora_functional:
        return network_forward(self, input, originals.Linear_forward)
    network_apply_weights(self)
    return originals.Linear_forward(self, input)


def network_Conv2d_forward(self, input):
    if shared.opts.lora_functional:
        return network_forward(self, input, originals.Conv2d_forward)
    network_apply_weights(self)
    return originals.Conv2d_forward(self, input)


def install():
    """What the Lora extension does when the WebUI loads it."""
    global originals
    import extra_networks_lora

    if originals is None:
        originals = SimpleNamespace(Linear_forward=torch.nn.Linear.forward, Conv2d_forward=torch.nn.Conv2d.forward)
        torch.nn.Linear.forward, torch.nn.Conv2d.forward = network_Linear_forward, network_Conv2d_forward
    extra_networks.register_extra_network(extra_networks_lora.ExtraNetworkLora())
    if "lora_functional" not in shared.opts.data_labels:
        shared.opts.add_option("lora_functional", shared.OptionInfo(False, "Lora/Networks: use old method"))


def uninstall():
    global originals
    if originals is not None:
        torch.nn.Linear.forward, torch.nn.Conv2d.forward = originals.Linear_forward, originals.Conv2d_forward
        originals = None
    extra_networks.extra_network_registry.pop("lora", None)
    loaded_networks.clear()
    networks_in_memory.clear()
