"""Each unit's ControlNet on its engine, for one call of sd-webui-controlnet's forward (issue 23).

For the duration of that call only, each unit's control model (`ControlParams.control_model`) is
replaced by an EngineControlModel: ControlNet's forward still does everything around the model
call itself (weight, soft injection, control modes, masks, global pooling, the sum over units);
the stand-in only answers the call `param.control_model(x=, hint=, timesteps=, context=, y=)` from
the engine built from the unit's file when one covers it, and otherwise calls the model, with
the reason in the infotext (one line per unit and outcome, once per generation). An engine stands
in only where it provably computes what the model would: a plain ControlNet (ControlModelType
ControlNet, ControlNet's own classes), found by the file it was loaded from, whose weights in
memory are that file's (controlnet_units.WeightsCheck), called with no other inputs.

The stand-ins also count their calls (UnitCalls): in v1.1.455 ControlNet's residuals and
T2I-Adapter's features come only from these calls, so the bridge tells on the host whether a step
adds anything to the UNet, without reading the residuals back from the device.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from modules import devices

from sd_unet_trt.scripts.trt_unet_webui import generation
from sd_unet_trt.scripts.trt_unet_webui.controlnet_units import (WeightsCheck, controlnet_hook, listed_models,
                                                                  model_file, served_kind_problem)
from sd_unet_trt.scripts.trt_unet_webui.workspace import workspace
from sd_unet_trt.trt_core.controlnet import (controlnet_engines, controlnet_file_sha256, is_controlnet_entry,
                                             load_controlnet)
from sd_unet_trt.trt_core.hook_policy import manifest_signature
from sd_unet_trt.trt_core.profiles import CallShape

log = logging.getLogger("sd_unet_trt")
KEPT_CONTROLNETS = 4  # ControlNet files whose engines stay loaded (a generation rarely uses more)
_engines: dict[str, tuple[object, object]] = {}  # sha256 -> (manifest signature, ControlNetEngines | None)
_engines_lock = threading.Lock()
_weights = WeightsCheck(lambda path: load_controlnet(path)[0])


def engines_of(sha256: str):
    """The ControlNet file's engines on this device (None: none), read again when the manifest changes."""
    signature = manifest_signature(workspace())
    with _engines_lock:
        known = _engines.pop(sha256, None)
        if known is not None and known[0] == signature:
            _engines[sha256] = known  # the most recently used last
            return known[1]
        _close(known)
        engines = controlnet_engines(workspace(), sha256, devices.device.type)
        _engines[sha256] = (signature, engines)
        while len(_engines) > KEPT_CONTROLNETS:
            _close(_engines.pop(next(iter(_engines))))
        return engines


def release_engines() -> None:
    """Every ControlNet engine given back (the extension is unloaded)."""
    with _engines_lock:
        while _engines:
            _close(_engines.popitem()[1])


def _close(known) -> None:
    if known is not None and known[1] is not None:
        known[1].close()


_engine_files: list = [None, {}]  # [manifest signature, {file stem: sha256} of the ControlNet engines' files]


def engine_files() -> dict[str, str]:
    """The ControlNet files engines were built of, by file stem (their manifest name): sha256."""
    signature = manifest_signature(workspace())
    if _engine_files[0] != signature or signature is None:
        entries = workspace().manifest().entries() if signature is not None else []
        _engine_files[:] = [signature, {e.checkpoint.name: e.checkpoint.sha256 for e in entries
                                        if is_controlnet_entry(e)}]
    return _engine_files[1]


def file_by_weights(inner: torch.nn.Module) -> tuple[str, Path] | None:
    """A listed ControlNet file with engines whose weights the model holds, for a model ControlNet's
    cache no longer names (it drops the oldest model when a unit loads another beyond its size)."""
    stems = engine_files()
    for name, path in listed_models().items():
        sha256 = stems.get(path.stem)
        if sha256 and controlnet_file_sha256(path) == sha256 and not _weights.problem(inner, path, sha256):
            return name, path
    return None


def _engine_for(param, unit: str) -> tuple[str, object, str]:
    """(the unit's name: its model's as ControlNet lists it, else `unit`; its engines or None; why not)."""
    problem = served_kind_problem(param)
    found = model_file(param.control_model)
    if found is None and not problem:
        found = file_by_weights(param.control_model.control_model)
    name = found[0] if found else unit
    if problem:
        return name, None, problem
    if found is None:
        return name, None, ("its file is unknown (ControlNet's model cache no longer holds it, and no ControlNet "
                            "file with engines holds its weights)")
    path = found[1]
    sha256 = controlnet_file_sha256(path)
    engines = engines_of(sha256)
    if engines is None:
        return name, None, f"no ControlNet engine of {path.name} (build one in the TensorRT tab)"
    problem = _weights.problem(param.control_model.control_model, path, sha256)
    return name, (engines if not problem else None), problem


@dataclass
class UnitCalls:
    """The units' model calls during one forward of ControlNet's. `known` is False when the count
    cannot tell whether ControlNet added anything: no unit was swapped (a ControlNet version
    without `control_params`, say), or a unit's model already counts for another forward."""

    count: int = 0
    known: bool = True


class EngineControlModel:
    """A unit's control model for one call: its engine's outputs when they cover the call, the
    model's own otherwise; each call counted in `calls`. Everything else (ControlNet's device moves,
    attribute reads) goes to the model; `__class__` is the model's, as ControlNet's isinstance
    checks expect."""

    def __init__(self, model, name: str, engines, problem: str, calls: UnitCalls):
        self._model, self._name, self._engines, self._problem = model, name, engines, problem
        self._calls = calls

    @property
    def __class__(self):
        return type(self._model)

    def __getattr__(self, attribute):
        return getattr(self._model, attribute)

    def __call__(self, *args, **kwargs):
        self._calls.count += 1
        output, reason = self._engine_output(args, kwargs)
        report = generation.current()
        if output is not None:
            report.note(f"ControlNet {self._name}: {reason}")
            return output
        report.note(f"ControlNet {self._name}: eager ({reason})")
        return self._model(*args, **kwargs)

    def _engine_output(self, args, kwargs) -> tuple[list[torch.Tensor] | None, str]:
        """(outputs, the engine's name) or (None, why not)."""
        if self._engines is None:
            return None, self._problem
        extra = sorted(k for k, v in kwargs.items() if k not in ("x", "hint", "timesteps", "context", "y")
                       and v is not None)
        if args or extra:
            return None, f"inputs engines do not take ({', '.join(extra) or 'positional'})"
        x, hint, timesteps, context, y = (kwargs.get(k) for k in ("x", "hint", "timesteps", "context", "y"))
        if isinstance(hint, torch.Tensor) and hint.dim() == 4 and hint.shape[0] == 1 and x.shape[0] > 1:
            # ControlNet's control image has one row (get_pytorch_control: 1 c h w): cldm adds its encoding
            # to every row of x by broadcasting; engines take one per row
            hint = hint.expand(x.shape[0], -1, -1, -1).contiguous()
        try:
            outputs, reason = self._engines.run_or_reason(x, hint, timesteps, context, y)
            if outputs is None:
                return None, reason
            # which engine it was, for the infotext (the plan of the call just served: shapes only)
            served = self._engines.router.plan(CallShape.of(x, context, y, [hint])).record
        except Exception as e:  # an engine that fails: the model answers, never an error
            log.debug("TensorRT: a ControlNet engine failed", exc_info=True)
            return None, f"its engine failed ({type(e).__name__}: {e})"
        # the model returns its outputs in x's dtype (cldm.ControlNet.forward, `original_type`)
        return [o.to(x.dtype) for o in outputs], served.label if served is not None else "its engine"


@contextlib.contextmanager
def units_on_engines(controlnet_forward):
    """While the block runs, every unit of the ControlNet forward `controlnet_forward` (the
    function ControlNet put on the UNet) calls an EngineControlModel; afterwards each unit has its
    model back, whatever happened. Yields the UnitCalls its calls are counted in."""
    hook = controlnet_hook(controlnet_forward)
    calls = UnitCalls()
    swapped = []
    try:
        for index, param in enumerate(list(getattr(hook, "control_params", None) or ())):
            model = getattr(param, "control_model", None)
            if model is None:  # a unit without a model (reference-only, ReVision) adds no residuals
                continue
            if isinstance(model, EngineControlModel):  # a forward inside another's: its calls count there
                calls.known = False
                continue
            try:
                name, engines, problem = _engine_for(param, f"unit {index + 1}")
            except Exception as e:  # nothing here may break a generation: the model runs
                log.debug("TensorRT: finding a ControlNet's engine failed", exc_info=True)
                name, engines, problem = f"unit {index + 1}", None, f"finding its engine failed ({type(e).__name__}: {e})"
            param.control_model = EngineControlModel(model, name, engines, problem, calls)
            swapped.append((param, model))
        calls.known = calls.known and bool(swapped)
        yield calls
    finally:
        for param, model in swapped:
            param.control_model = model
