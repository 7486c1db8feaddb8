"""sd-webui-controlnet's sampling steps through the engines (issue 13; docs/WEBUI.md says how it
reaches the UNet).

While ControlNet is active it replaces the UNet's `forward` on the model instance with its own,
which runs the ControlNet models and then the UNet's blocks itself, adding their residuals: the
engine UNet never sees those calls, and the built-in UNet runs where the WebUI moved it. Each
sampler step, `attach` wraps such a forward. A wrapped call runs ControlNet's forward, unchanged, on
a stand-in for the UNet whose blocks compute nothing: each hands back zeros of its output's shape,
so what ControlNet adds to them is exactly its residuals and T2I-Adapter's features, with every unit
summed and its weight, control mode, mask and start/end applied by ControlNet itself. The stand-in's
output layer runs the engine on the inputs and residuals it collected, and ControlNet's
post-processing (colour fix, inpaint restore) works on the engine's output.

Whatever the stand-in cannot reproduce runs ControlNet's forward on the built-in UNet for that
call, with the reason in the infotext: layers of the UNet patched on the instance (reference-only
and the like; live_weights finds them), additions inside the encoder anywhere but where T2I-Adapter
features go, no engine with control inputs, a shape no engine covers, a forward of another
extension or of a ControlNet version that does not drive the blocks this way.

Independently, each unit's ControlNet model runs on its own engine during the call where one
covers it (controlnet_served.py), whether the UNet's part runs on the engine or falls back.
"""
from __future__ import annotations

import logging

import torch

from sd_unet_trt.scripts.trt_unet_webui import generation
from sd_unet_trt.scripts.trt_unet_webui.controlnet_served import UnitCalls, units_on_engines
from sd_unet_trt.scripts.trt_unet_webui.hook import TrtUnet, active_unet
from sd_unet_trt.scripts.trt_unet_webui.live_weights import replaced

log = logging.getLogger("sd_unet_trt")
BRIDGED = "_sd_unet_trt_bridged"  # marks our wrapper on the UNet instance
# sd-webui-controlnet's replacement forward (scripts/hook.py, UnetHook.hook.<locals>.forward_webui)
CONTROLNET_FORWARD = "UnetHook.hook.<locals>."


class NotServed(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


class UNetStandIn:
    """What ControlNet's forward takes for `self`: the UNet's attributes it reads, with blocks that
    collect their inputs and return zeros of their outputs' shapes, and an output layer that asks
    `serve(x, context, y, control)` for the engine's output (NotServed when there is none), with
    control None when the units' model calls counted in `calls` added nothing.

    What ControlNet adds between two encoder blocks is a T2I-Adapter's feature (where the extension
    adds them); what it adds to a skip as the decoder takes it is that feature (the skip kept it)
    plus ControlNet's residual; what it adds to the middle block's output is a residual (and SDXL's
    fourth adapter feature, which the engine's middle residual input takes as well)."""

    def __init__(self, unet: torch.nn.Module, family, serve, calls: UnitCalls):
        self.model_channels = unet.model_channels
        self._family, self._serve, self._calls = family, serve, calls
        self._skips = len(family.base_config.skips())
        self._adapter_blocks = family.base_config.adapter_blocks()
        self.input_blocks = [lambda h, emb, context, i=i: self._input(i, h, context) for i in range(self._skips)]
        self.middle_block = lambda h, emb, context: self._middle(h)
        self.output_blocks = [lambda h, emb, context, *rest, i=i: self._output(i, h) for i in range(self._skips)]
        self.time_embed = lambda t_emb: torch.zeros((), dtype=t_emb.dtype, device=t_emb.device)
        self.label_emb = self._label
        self.out = self._out
        self._x = self._context = self._y = None
        self._shapes: list[tuple[int, int, int, int]] = []  # the control inputs' (family.control_shapes), set by x
        self._returned: list[torch.Tensor] = []  # what each block handed back, in call order
        self._residuals: dict[int, torch.Tensor] = {}  # by skip (the middle block's last)
        self._features: dict[int, torch.Tensor] = {}  # by the input block they were added after

    def _zeros(self, shape) -> torch.Tensor:
        return torch.zeros(shape, dtype=self._x.dtype, device=self._x.device)

    def _label(self, y: torch.Tensor) -> torch.Tensor:
        self._y = y
        return torch.zeros((), dtype=y.dtype, device=y.device)

    def _passed_down(self, block: int, h: torch.Tensor) -> None:
        """Keeps what ControlNet added to input block `block`'s output before the next block took it."""
        returned = self._returned[-1] if self._returned else None
        if h is returned:
            return
        if returned is None or block not in self._adapter_blocks or h.shape != returned.shape:
            raise NotServed(f"something adds to the UNet's encoder after block {block}, where engines take nothing")
        self._features[block] = h - returned

    def _input(self, i: int, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if i == 0:
            self._x, self._context = h, context
            self._shapes = self._family.control_shapes(h.shape[0], h.shape[2], h.shape[3])
        else:
            self._passed_down(i - 1, h)
        if context is not self._context:
            raise NotServed("the text conditioning changes between the UNet's blocks")
        self._returned.append(self._zeros(self._shapes[i]))
        return self._returned[-1]

    def _middle(self, h: torch.Tensor) -> torch.Tensor:
        self._passed_down(self._skips - 1, h)
        self._returned.append(self._zeros(self._shapes[self._skips]))
        return self._returned[-1]

    def _output(self, i: int, h: torch.Tensor) -> torch.Tensor:
        shapes = self._shapes
        skip = self._skips - 1 - i  # the skip connection this block takes (the last one first)
        before = self._returned[-1].shape[1]  # channels of what came up from below
        if h.dim() != 4 or h.shape[1] != before + shapes[skip][1]:
            raise NotServed(f"ControlNet fed output block {i} {list(h.shape)}, not the UNet's layout")
        if i == 0:
            self._residuals[self._skips] = h[:, :before]  # zeros + the middle block's residual
        taken = h[:, before:]  # zeros + the skip's adapter feature, if any, + its residual
        self._residuals[skip] = taken - self._features[skip] if skip in self._features else taken
        below = shapes[max(skip - 1, 0)]  # the next block takes the next skip: its size
        channels = self._family.base_config.output_channels()[i]
        self._returned.append(self._zeros((h.shape[0], channels, below[2], below[3])))
        return self._returned[-1]

    def _out(self, h: torch.Tensor) -> torch.Tensor:
        if sorted(self._residuals) != list(range(self._skips + 1)):
            raise NotServed("ControlNet's forward did not run every block of the UNet")
        control = [self._residuals[i] for i in range(self._skips + 1)]
        control += [self._features[b] if b in self._features else self._zeros(self._shapes[self._skips + 1 + k])
                    for k, b in enumerate(self._adapter_blocks)]
        # every unit outside its start/end: the plain UNet's call, for any engine. Residuals come only
        # from the units' model calls, so their count says it on the host; reading the residuals
        # instead would wait for the device at every step. A count of calls whose outputs sum to
        # zero (weight 0) gives the engine zeros: the same h + 0.
        if self._calls.known and (self._calls.count > 0 or _COUNT.trusted()):
            active = self._calls.count > 0
        else:  # units not counted (another ControlNet version), or the count's check: on the device
            active = bool(torch.stack([c.abs().amax() for c in control]).amax() > 0)
            if self._calls.known:
                _COUNT.checked(added=active)
        return self._serve(self._x, self._context, self._y, control if active else None)


class CountCheck:
    """That "no unit's model was called" means "nothing was added" is a fact of sd-webui-controlnet
    v1.1.455; the first such step of each generation checks it on the device (one read back), and
    a version where it does not hold has every such step checked from then on: an image is never
    made without residuals ControlNet added."""

    def __init__(self):
        self._report = None  # the generation whose count-0 step was checked
        self._broken = False

    def trusted(self) -> bool:
        return not self._broken and self._report is generation.current()

    def checked(self, added: bool) -> None:
        self._report = generation.current()
        if added and not self._broken:
            self._broken = True
            log.warning("TensorRT: sd-webui-controlnet added residuals on a step where no unit's model was "
                        "called; the engine bridge reads them back on every such step from now on")


_COUNT = CountCheck()


def _fallback(unet_hook: TrtUnet, forward, x, timesteps, context, kwargs, reason: str, detail: str = ""):
    unet_hook.note_fallback(reason, detail)
    with unet_hook.builtin_only(reason):  # ControlNet's reference pass calls the UNet: the built-in one
        return unet_hook.run_builtin(x, timesteps, context, (), kwargs, forward=forward)


def bridged(installed, unet: torch.nn.Module):
    """The forward to put on the UNet in place of `installed` (a forward bound to it by another
    extension)."""
    function = getattr(installed, "__func__", None)
    is_controlnet = function is not None and CONTROLNET_FORWARD in getattr(function, "__qualname__", "")

    def forward(x, timesteps=None, context=None, *args, **kwargs):
        unet_hook = active_unet()
        if unet_hook is None or args:
            return installed(x, timesteps, context, *args, **kwargs)
        if not is_controlnet:
            name = getattr(installed, "__qualname__", type(installed).__name__)
            return _fallback(unet_hook, lambda _unet, *a, **k: installed(*a, **k), x, timesteps, context, kwargs,
                             f"another extension replaced the UNet's forward ({name})")
        with units_on_engines(function) as calls:  # each unit's ControlNet on its engine where one covers it
            return _on_standin(unet_hook, function, unet, calls, x, timesteps, context, kwargs)

    setattr(forward, BRIDGED, True)
    return forward


def _on_standin(unet_hook: TrtUnet, function, unet, calls: UnitCalls, x, timesteps, context, kwargs):
    """ControlNet's forward `function` on the UNet's stand-in (its units' model calls counted in
    `calls`), or on the built-in UNet with the reason."""
    engines = unet_hook.prepare()  # layers ControlNet patched (reference-only...) are a problem found here
    if engines is None:
        return _fallback(unet_hook, function, x, timesteps, context, kwargs, unet_hook.problem)

    def serve(x_in, context_in, y, residuals):
        output, reason, detail = unet_hook.serve(x_in, timesteps, context_in, y, residuals)
        if output is None:
            raise NotServed(reason, detail)
        return output

    standin = UNetStandIn(unet, engines.router.records[0].family.plain, serve, calls)
    try:
        return function(standin, x, timesteps, context, **kwargs)
    except NotServed as e:
        return _fallback(unet_hook, function, x, timesteps, context, kwargs, e.reason, e.detail)
    except Exception as e:  # a ControlNet version that drives the UNet otherwise: its own way, never an error
        log.debug("TensorRT: ControlNet's forward on the engine bridge failed", exc_info=True)
        return _fallback(unet_hook, function, x, timesteps, context, kwargs,
                         f"ControlNet's forward does not run on the engine bridge ({type(e).__name__}: {e})")


def attach(sd_model) -> bool:
    """Wrap a forward another extension put on the UNet instance (once per installation; the
    extension's own restore removes the wrapper with it). True when one is wrapped now."""
    unet = getattr(getattr(sd_model, "model", None), "diffusion_model", None)
    if unet is None or active_unet() is None:
        return False
    installed = replaced(unet, "forward")
    if installed is None or getattr(installed, BRIDGED, False):
        return False
    unet.forward = bridged(installed, unet)
    return True
