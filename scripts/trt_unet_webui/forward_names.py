"""Patches made outside the UNet's layers: the module-level names its forward code looks up at call
time, watched for replacements (issue 19).

ldm's and sgm's openaimodel call `th.cat` (modules.sd_hijack_unet's TorchHijackForUnet), attention
and util call `torch`/`F` functions and their own helpers. An extension that replaces one of these
names changes what the built-in UNet computes without touching a layer, so
live_weights.forward_problem cannot see it: FreeU (sd-webui-freeu) sets `th.cat` to its own
function. Engines compute the plain UNet, so such a pass falls back, with the reason.

A snapshot of the watched namespaces is taken when this extension loads, after the WebUI's own
patching (sd_hijack, sd_hijack_unet's CondFuncs and sd_hijack_optimizations run when the WebUI
imports them; at model load apply_optimizations sets openaimodel.th to sd_hijack_unet.th and swaps
class attributes, which are not watched here). Each pass compares identities and judges only what
changed, plus what was already foreign in the snapshot (an extension that loaded before this one).

A value is judged by where its code was written: a function through functools.partial and bound
methods, by its code's globals (functools.wraps copies __module__, the globals it cannot). It is
foreign when that file lies in an extensions folder, or, when it changed since the snapshot, when
its module is not torch, ldm, sgm, the WebUI's modules or the standard library's builtins. A known
patcher is recognised and asked whether it acts now: FreeU's th.cat passes every call through
unchanged while FreeU is switched off, so it blocks engines only while it is on.
"""
from __future__ import annotations

import functools
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# where the names the UNet's forward resolves live (those not imported are skipped)
WATCHED_MODULES = ("modules.sd_hijack_unet", "modules.sd_hijack_optimizations", "modules.sub_quadratic_attention",
                   "ldm.modules.diffusionmodules.openaimodel", "ldm.modules.attention", "ldm.modules.diffusionmodules.util",
                   "sgm.modules.diffusionmodules.openaimodel", "sgm.modules.attention", "sgm.modules.diffusionmodules.util",
                   "torch", "torch.nn.functional")
# modules whose values may replace a watched one: the WebUI's own patches come from these
KNOWN_ORIGINS = ("torch", "ldm", "sgm", "modules", "builtins", "einops", "math", "numpy")
UNWRAP_DEPTH = 8  # partials of partials of bound methods...


@dataclass(frozen=True)
class KnownPatcher:
    """An extension recognised by the function its patch calls, and whether that patch acts now."""
    name: str
    module: str  # the module the patch's function is defined in
    function: str
    active: Callable[[types.FunctionType], bool]


def freeu_active(function: types.FunctionType) -> bool:
    """sd-webui-freeu's free_u_cat_hijack passes every call through while `global_state.instance.enable`
    is off (its script sets that from the UI before each generation)."""
    state = function.__globals__.get("global_state")
    instance = getattr(state, "instance", None)
    return bool(getattr(instance, "enable", True))  # unreadable: assume it acts


KNOWN_PATCHERS = (KnownPatcher("FreeU", "lib_free_u.unet", "free_u_cat_hijack", freeu_active),)


def target_of(value):
    """What actually runs when `value` is called: through partials and bound methods."""
    for _ in range(UNWRAP_DEPTH):
        if isinstance(value, functools.partial):
            value = value.func
        elif isinstance(value, types.MethodType):
            value = value.__func__
        else:
            break
    return value


def origin(value) -> tuple[str, str]:
    """(module name, source file) of the code behind `value` ("" where unknown)."""
    target = target_of(value)
    if isinstance(target, types.FunctionType):
        return str(target.__globals__.get("__name__", "")), target.__code__.co_filename
    if isinstance(target, types.ModuleType):
        return target.__name__, str(getattr(target, "__file__", "") or "")
    if isinstance(target, types.BuiltinFunctionType):
        name = str(getattr(target, "__module__", "") or "")
    else:
        name = str(getattr(target if isinstance(target, type) else type(target), "__module__", "") or "")
    return name, str(getattr(sys.modules.get(name), "__file__", "") or "")


def is_known_module(name: str) -> bool:
    return any(name == known or name.startswith(known + ".") for known in KNOWN_ORIGINS)


def extension_folder(file: str, extension_dirs: tuple[Path, ...]) -> str:
    """The extension folder's name when `file` lies in one ("" otherwise)."""
    if not file:
        return ""
    path = Path(file).resolve()
    for root in extension_dirs:
        try:
            return path.relative_to(root).parts[0]
        except (ValueError, IndexError):
            continue
    return ""


def default_extension_dirs() -> tuple[Path, ...]:
    paths = sys.modules.get("modules.paths_internal")
    dirs = [getattr(paths, name, None) for name in ("extensions_dir", "extensions_builtin_dir")]
    return tuple(Path(d).resolve() for d in dirs if d)


@dataclass
class Namespace:
    """One watched dict (a module's globals, the `th` object's attributes) and its snapshot."""
    label: str  # how the UNet's code names it: "th", "ldm.modules.attention"
    values: dict
    snapshot: dict = field(default_factory=dict)
    suspects: set = field(default_factory=set)  # names foreign in the snapshot, judged again every pass


def namespaces() -> list[Namespace]:
    found = []
    hijack = sys.modules.get("modules.sd_hijack_unet")
    th = getattr(hijack, "th", None)
    if th is not None and hasattr(th, "__dict__"):  # FreeU sets th.cat on the object itself
        found += [Namespace("th", vars(th)), Namespace(type(th).__name__, vars(type(th)))]
    for name in WATCHED_MODULES:
        module = sys.modules.get(name)
        if module is not None:
            found.append(Namespace(name, vars(module)))
    return found


def is_watched(name: str) -> bool:
    return not (name.startswith("__") and name.endswith("__"))


class ForwardNames:
    """The snapshot, and the per-pass judgement."""

    def __init__(self, extension_dirs: tuple[Path, ...] | None = None):
        self.extension_dirs = default_extension_dirs() if extension_dirs is None else extension_dirs
        self.watched = namespaces()
        for space in self.watched:
            space.snapshot = {k: v for k, v in list(space.values.items()) if is_watched(k)}
            space.suspects = {k for k, v in space.snapshot.items() if extension_folder(origin(v)[1], self.extension_dirs)}

    def judge(self, space: Namespace, name: str, value, changed: bool) -> tuple[str, bool]:
        """(why engines cannot compute a UNet that calls `value` under this name, "" when they can;
        whether `value` is an extension's, to be judged again every pass)."""
        module, file = origin(value)
        folder = extension_folder(file, self.extension_dirs)
        if not folder and not (changed and not is_known_module(module)):
            return "", False
        where = f"{space.label}.{name}"
        target = target_of(value)
        for patcher in KNOWN_PATCHERS:
            if module == patcher.module and getattr(target, "__name__", "") == patcher.function:
                if not patcher.active(target):
                    return "", True
                return f"{patcher.name} ({folder or module}) replaces {where} in the UNet's forward", True
        return f"an extension ({folder or module or type(value).__name__}) replaces {where} in the UNet's forward", True

    def problem(self) -> str:
        """Once per pass: the first watched name an active extension replaced ("" when none)."""
        for space in self.watched:
            for name, value in list(space.values.items()):
                before = space.snapshot.get(name, space)  # the namespace itself: "no such name before"
                if (value is before and name not in space.suspects) or not is_watched(name):
                    continue
                reason, foreign = self.judge(space, name, value, changed=value is not before)
                if reason:
                    return reason
                space.snapshot[name] = value
                if foreign:  # an inert patch (FreeU switched off) may act at the next pass
                    space.suspects.add(name)
                else:  # a known module's change (a lazy torch import, the WebUI's own): accepted
                    space.suspects.discard(name)
        return ""


_watch: ForwardNames | None = None


def take_snapshot() -> None:
    """When the extension loads (scripts/trt_unet.py)."""
    global _watch
    _watch = ForwardNames()


def problem() -> str:
    if _watch is None:
        take_snapshot()
    return _watch.problem()
