"""What sd-webui-controlnet (v1.1.455) holds for its units during sampling, read without changing it:
its UnetHook (whose `control_params` are the units), the file each unit's model was loaded from,
and whether the model in memory still holds that file's weights. docs/WEBUI.md has the facts.

ControlNet does not record a model's file on the model. It caches what it loaded by the name it
lists (`Script.model_cache`, an OrderedDict name -> ControlModel), hands each unit a shallow copy of
the cached wrapper (the inner `control_model` module is shared), and maps names to files in
`global_state.cn_models`. So a unit's file is found by the identity of its inner module in that
cache; a model evicted from it (more models than the cache size) has no known file.
"""
from __future__ import annotations

import threading
import weakref
from pathlib import Path
from typing import Callable

import torch

from modules import script_loading

# the classes of a plain ControlNet as ControlNet's loader builds it (scripts/cldm.py)
WRAPPER_CLASS, MODEL_CLASS = "PlugableControlModel", "ControlNet"
COMPUTE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
SERVED_TYPE = "ControlNet"  # ControlModelType.ControlNet: ControlNet-LoRA, Union, InstantID... are other types


def controlnet_hook(forward_function) -> object | None:
    """ControlNet's UnetHook, from the closure of the forward it put on the UNet (forward_webui
    closes over `outer`, the hook whose `control_params` it reads at every call)."""
    names = getattr(getattr(forward_function, "__code__", None), "co_freevars", ())
    for name, cell in zip(names, getattr(forward_function, "__closure__", None) or ()):
        if name == "outer":
            value = cell.cell_contents
            return value if isinstance(getattr(value, "control_params", None), list) else None
    return None


def _controlnet_scripts() -> list:
    """The module(s) of ControlNet's main script as the WebUI loaded them (by path, not in
    sys.modules): those whose Script caches models by name."""
    found = []
    for module in list(script_loading.loaded_scripts.values()):
        script = getattr(module, "Script", None)
        if isinstance(getattr(script, "model_cache", None), dict) and hasattr(module, "global_state"):
            found.append(module)
    return found


def model_file(control_model) -> tuple[str, Path] | None:
    """(the name ControlNet lists, its file) of the model a unit uses, or None when ControlNet's
    cache no longer holds it."""
    inner = getattr(control_model, "control_model", None)
    for module in _controlnet_scripts():
        for name, cached in list(module.Script.model_cache.items()):
            if getattr(getattr(cached, "model", None), "control_model", None) is inner and inner is not None:
                path = module.global_state.cn_models.get(name)
                if isinstance(path, str) and path:
                    return name, Path(path.strip('"'))
    return None


def listed_models() -> dict[str, Path]:
    """The models ControlNet lists (its model dropdown, /controlnet/model_list) by that name; none
    when ControlNet is not installed."""
    listed = {}
    for module in _controlnet_scripts():
        for name, path in list(module.global_state.cn_models.items()):
            if isinstance(path, str) and path and name != "None":
                listed[name] = Path(path.strip('"'))
    return listed


def served_kind_problem(param) -> str:
    """Why an engine cannot stand for this unit's model by its kind ("" when it may)."""
    kind = getattr(getattr(param, "control_model_type", None), "name", "?")
    if kind != SERVED_TYPE:
        return f"{kind} models have no engines"
    wrapper = param.control_model
    inner = getattr(wrapper, "control_model", None)
    if type(wrapper).__name__ != WRAPPER_CLASS or type(inner).__name__ != MODEL_CLASS:
        return f"an unknown ControlNet class ({type(wrapper).__name__}/{type(inner).__name__})"
    if getattr(wrapper, "is_control_lora", False):
        return "ControlNet-LoRA models have no engines"
    return ""


def _signature(module: torch.nn.Module) -> tuple:
    """Changes when any weight is written in place (its version counter) or cast to another dtype;
    moving between devices keeps it (torch keeps a parameter's version across .to())."""
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    return tuple((name, t.dtype, t._version) for name, t in tensors)


class WeightsCheck:
    """Whether a live ControlNet holds exactly its file's weights (cast to its dtype), proven once
    per module and state of its weights by comparing every tensor with the file's as
    `load_reference` loads it."""

    def __init__(self, load_reference: Callable[[Path], torch.nn.Module]):
        self._load = load_reference
        # module -> {sha256: (signature, problem)}; weak: a model ControlNet dropped takes its verdicts along
        self._known: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def problem(self, live: torch.nn.Module, path: Path, sha256: str) -> str:
        signature = _signature(live)
        with self._lock:
            known = self._known.get(live, {}).get(sha256)
        if known is not None and known[0] == signature:
            return known[1]
        problem = self._compare(live, path)
        with self._lock:
            self._known.setdefault(live, {})[sha256] = (signature, problem)
        return problem

    def _compare(self, live: torch.nn.Module, path: Path) -> str:
        try:
            reference = self._load(path).state_dict()
        except Exception as e:  # a file the engine builder cannot take cannot be proven equal either
            return f"{path.name} cannot be read as a ControlNet ({type(e).__name__}: {e})"
        state = live.state_dict()
        if set(state) != set(reference):
            return f"the loaded ControlNet's layers differ from {path.name}'s"
        cast = sorted({str(v.dtype) for v in state.values() if v.is_floating_point() and v.dtype not in COMPUTE_DTYPES})
        if cast:  # the WebUI's fp8 storage: eager computes with rounded weights no engine holds
            return f"the loaded ControlNet holds {', '.join(cast)} weights"
        with torch.no_grad():
            for name, value in state.items():
                expected = reference[name]
                if expected.shape != value.shape and _squeezed(expected.shape) == _squeezed(value.shape):
                    expected = expected.reshape(value.shape)  # SD1.x's 1x1 proj_in/out: conv in cldm, maybe linear in ours
                if value.shape != expected.shape or not torch.equal(expected.to(value.device, value.dtype), value):
                    return f"the loaded ControlNet's weights differ from {path.name} ({name})"
        return ""


def _squeezed(shape: torch.Size) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)
