"""What the WebUI's UNet would compute with now, read off the live model once per sampling pass.

- Base weights: each layer's weights before any network. The built-in Lora keeps a backup
  (`network_weights_backup`) of every layer it has run with a network, and in place it restores
  the backup before applying a set of networks other than the one the layer holds; a layer that
  holds none while none is wanted runs as it is (its backup, if any, is stale). With its
  `lora_functional` setting it runs the layer on the restored weights and adds each network's
  output, except that with no network at all it runs the layer on whatever the weights hold. Anything else that changed weights in place (another extension, fp8
  storage, a different file loaded under the same name) shows in trt_core.weight_sync's
  fingerprints.
- Merge: what the active networks (LoRA, LyCORIS types) add, computed with their own
  `calc_updown`, in the order and arithmetic of `network_apply_weights` (each network sees the
  weight the previous one produced), or, in functional mode, each from the base weight.
- Problems: what engines cannot reproduce, so every call of the pass falls back with the reason: a
  layer's forward replaced or hooked by an unknown extension, Hypertile switched on (its wrappers,
  left on the layers once it is off, are inert then and do not count), a module class whose forward comes
  from outside torch/ldm/sgm/the WebUI/its Lora (token merging, say), circular padding (the
  WebUI's Tiling), fp8 weight storage with a network, DoRA in functional mode (the WebUI leaves
  DoRA out there).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Hashable

import torch
import torch.nn.functional as F

from sd_unet_trt.scripts.trt_unet_webui import module_walk
from sd_unet_trt.trt_core.weight_sync import Merge

# where the forwards of a UNet's module classes may come from and still compute what engines do
# (and this extension's own UNet, the engines' reference, which the WebUI test double uses)
KNOWN_FORWARDS = ("torch.", "ldm.", "sgm.", "modules.", "networks", "lora_patches", "sd_unet_trt.models.")
WEIGHT, BIAS = "weight", "bias"
BACKUPS = {WEIGHT: "network_weights_backup", BIAS: "network_bias_backup"}  # the Lora extension's names


def lora_networks():
    """The built-in Lora extension's `networks` module, when it is loaded."""
    module = sys.modules.get("networks")
    if module is not None and hasattr(module, "loaded_networks") and hasattr(module, "network_apply_weights"):
        return module
    return None


def networks_key(functional: bool) -> Hashable:
    """Changes whenever the active networks or their multipliers change (cheap: checked every call)."""
    networks = lora_networks()
    if networks is None:
        return ()
    return functional, tuple((id(net), net.name, net.te_multiplier, net.unet_multiplier, net.dyn_dim)
                             for net in networks.loaded_networks)


@dataclass
class LiveUNet:
    base: dict[str, torch.Tensor] = field(default_factory=dict)
    keys: dict[str, Hashable] = field(default_factory=dict)
    merge: Merge = field(default_factory=Merge)
    problem: str = ""  # non-empty: engines cannot reproduce this pass
    networks: list[str] = field(default_factory=list)  # "name:multiplier" of those that change the UNet


HYPERTILE_PARAMS = "__webui_hypertile_params"  # the WebUI's Hypertile keeps each wrapped layer's state here


def replacement(module: torch.nn.Module, name: str, value):
    """`value` as module's `name` (a forward) unless it is just its class's method bound to it, which
    sd-webui-controlnet leaves behind when it restores a layer it patched, and Hypertile wraps."""
    if getattr(value, "__self__", None) is module and getattr(value, "__func__", None) is getattr(type(module), name, None):
        return None
    return value


def replaced(module: torch.nn.Module, name: str):
    """The module's instance attribute `name`, unless it is its class's own method (replacement)."""
    value = vars(module).get(name)
    return None if value is None else replacement(module, name, value)


def hypertile_params(module: torch.nn.Module, forward):
    """Hypertile's state when `forward` is its wrapper (None otherwise). The WebUI's Hypertile wraps
    attention layers the first time it is switched on and never unwraps them: switched off, the
    wrapper calls the forward it wrapped (`params.forward`) unchanged (its `params.enabled` is off)."""
    params = vars(module).get(HYPERTILE_PARAMS)
    wrapped = getattr(forward, "__wrapped__", None)  # functools.wraps(params.forward)
    if params is None or wrapped is None or wrapped is not getattr(params, "forward", None):
        return None
    return params


def layer_forward_problem(path: str, module: torch.nn.Module) -> str:
    """Why engines cannot compute this layer's own forward ("" when they can)."""
    forward = replaced(module, "forward")
    params = hypertile_params(module, forward) if forward is not None else None
    if params is not None:
        if getattr(params, "enabled", True):
            return f"Hypertile is on (UNet layer {path}); engines do not tile attention"
        forward = replacement(module, "forward", params.forward)  # what the switched-off wrapper calls
    # `_forward`: the transformer blocks' inner forward, which reference-only and the like patch
    if forward is not None or replaced(module, "_forward") is not None:
        return f"an extension replaced the forward of UNet layer {path}"
    return ""


def forward_problem(modules: list[tuple[str, torch.nn.Module]]) -> str:
    """Why engines cannot compute what the UNet's modules ((path, module) each, the root first)
    compute ("" when they can)."""
    classes, class_pads = {}, {}
    for path, module in modules:
        own = vars(module)
        # a layer's own forward is in its instance dict (or none is): the common case costs two lookups
        if path and ("forward" in own or "_forward" in own):
            problem = layer_forward_problem(path, module)
            if problem:
                return problem
        # padding_mode is an instance attribute (torch's convolutions); getattr on a module without
        # one goes through nn.Module.__getattr__ and an AttributeError, most of a pass's time
        cls = type(module)
        if cls not in class_pads:
            class_pads[cls] = any("padding_mode" in vars(c) for c in cls.__mro__)
        mode = getattr(module, "padding_mode", "zeros") if class_pads[cls] else own.get("padding_mode", "zeros")
        if mode != "zeros":  # the WebUI's Tiling: circular padding
            return f"UNet layer {path} pads {mode} (Tiling); engines pad with zeros"
        if module._forward_pre_hooks or module._forward_hooks:
            for hook in [*module._forward_pre_hooks.values(), *module._forward_hooks.values()]:
                if not getattr(hook, "__module__", "").startswith("modules."):  # the WebUI's own (lowvram)
                    return f"an extension hooks UNet layer {path or '(root)'} ({getattr(hook, '__module__', '?')})"
        classes.setdefault(type(module), path)
    for cls, path in classes.items():
        origin = getattr(cls.forward, "__module__", "") or ""
        if not origin.startswith(KNOWN_FORWARDS):
            return f"{cls.__name__}.forward (UNet layer {path or '(root)'}) comes from {origin}"
    return ""


def first_names(params: dict) -> dict:
    """Each weight under its first name only, None left out, as named_parameters lists them."""
    seen, out = set(), {}
    for pname, param in params.items():
        if param is not None and id(param) not in seen:
            seen.add(id(param))
            out[pname] = param
    return out


def merge_function(layers, nets, functional: bool):
    """The merge for these layers ((path, layer name, module) each) as the Lora extension computes it."""
    def apply(originals):
        out = {}
        for path, layer_name, module in layers:
            prefix = f"{path}." if path else ""
            weight, bias = originals[prefix + WEIGHT], originals.get(prefix + BIAS)
            base_weight, changed_bias = weight, False
            for net in nets:
                part = net.modules.get(layer_name)
                if part is None:
                    continue
                updown, ex_bias = part.calc_updown(base_weight if functional else weight)
                if weight.dim() == 4 and weight.shape[1] == 9:  # inpainting: the 5 extra input channels get none
                    updown = F.pad(updown, (0, 0, 0, 0, 0, 5))
                weight = (weight.to(updown.dtype) + updown).to(weight.dtype)
                if ex_bias is not None:
                    if bias is None:
                        raise ValueError(f"network {net.name} adds a bias to UNet layer {path}, which has none")
                    bias, changed_bias = (bias + ex_bias).to(bias.dtype), True
            out[prefix + WEIGHT] = weight
            if changed_bias:
                out[prefix + BIAS] = bias
        return out
    return apply


def hypernetworks_problem(loaded) -> str:
    """The WebUI applies hypernetworks inside its attention code (sd_hijack_optimizations) on every
    call, from `shared.loaded_hypernetworks`, changing no layer: engines hold the plain attention."""
    names = [str(getattr(net, "name", "?")) for net in loaded or ()]
    return f"hypernetworks ({', '.join(names)}) act in the UNet's attention; engines do not take them" if names else ""


def read_base(modules: module_walk.ModuleWalk, networks_wanted: bool, functional: bool, live: LiveUNet) -> None:
    """Each weight's value before any network, and its identity key, into `live` (see the module's docstring)."""
    base, keys = live.base, live.keys
    for (_, module), prefix in zip(modules.modules, modules.prefixes):
        params = module._parameters
        if not params:
            continue
        # the Lora extension sets its backups and names as plain attributes (the instance dict):
        # getattr would go through nn.Module.__getattr__ and an AttributeError for every weight
        own = vars(module)
        restored = networks_wanted or (not functional and own.get("network_current_names", ()) != ())
        if len(params) == 2:  # most layers: weight and bias; unpacking is the cheap duplicate check
            first, second = params.values()
            if first is second:
                params = first_names(params)
        elif len(params) > 2 and len(set(map(id, params.values()))) < len(params):
            params = first_names(params)
        for pname, param in params.items():
            if param is None:
                continue
            tensor = param
            if restored and pname in BACKUPS:
                backup = own.get(BACKUPS[pname])
                if isinstance(backup, torch.Tensor):
                    tensor = backup
            name = prefix + pname
            base[name] = tensor
            keys[name] = (id(tensor), tensor._version, tensor.data_ptr())


def describe(unet: torch.nn.Module, functional: bool) -> LiveUNet:
    """The live UNet's base weights and the active networks' merge, or the problem that stops engines."""
    live = LiveUNet()
    modules = module_walk.walk(unet)
    live.problem = forward_problem(modules.modules)
    if live.problem:
        return live
    networks = lora_networks()
    loaded = list(networks.loaded_networks) if networks is not None else []
    layers = {}
    for path, module in modules.modules if loaded else ():
        name = getattr(module, "network_layer_name", None)
        if name is not None and any(name in net.modules for net in loaded):
            layers[name] = (path, name, module)
    nets = [net for net in loaded if any(name in net.modules for name in layers)]
    wanted = tuple((net.name, net.te_multiplier, net.unet_multiplier, net.dyn_dim) for net in loaded)
    read_base(modules, bool(wanted), functional, live)
    if not nets:
        return live
    for path, name, module in layers.values():
        if getattr(module, "fp16_weight", None) is not None:
            live.problem = f"the UNet's weights are stored in fp8, and a network changes layer {path}"
            return live
    if functional and any(getattr(part, "dora_scale", None) is not None and type(part).__name__ == "NetworkModuleLora"
                          for net in nets for part in net.modules.values()):
        live.problem = "a DoRA network in functional Lora mode (the WebUI leaves DoRA out there; engines do not)"
        return live
    names = set()
    for path, _, module in layers.values():
        prefix = f"{path}." if path else ""
        names.add(prefix + WEIGHT)
        if getattr(module, BIAS, None) is not None:
            names.add(prefix + BIAS)
    live.merge = Merge(frozenset(n for n in names if n.endswith(WEIGHT) or n in live.base),
                       merge_function(list(layers.values()), nets, functional), networks_key(functional))
    live.networks = [f"{net.name}:{net.unet_multiplier:g}" for net in nets]
    return live
