"""Whether a ControlNet step adds anything to the UNet, decided on the host (controlnet_served.UnitCalls):
sd-webui-controlnet's units driven through `control_params` as v1.1.455 does (the WebUI double's
`params` option), so every unit's model call is counted. No step reads the residuals back from the
device to decide it; tests/test_webui_controlnet.py covers the forward without `control_params`,
which keeps that check."""
from __future__ import annotations

import pytest
import torch

from tests.test_webui_controlnet import PLAIN, TOL, WITH_INPUTS, compare, generate, routing, tiny, units, webui  # noqa: F401 (fixtures)
from tests.webui_double.controlnet import ControlNetScript
from sd_unet_trt.scripts.trt_unet_webui import controlnet_bridge, controlnet_served
from sd_unet_trt.scripts.trt_unet_webui.controlnet_bridge import UNetStandIn

UNKNOWN_CLASS = "ControlNet unit 1: eager (an unknown ControlNet class (TinyControlModel/NoneType))"


def _read_back(*args, **kwargs):
    raise AssertionError("the bridge read a tensor back to the host")


@pytest.fixture
def no_read_back(monkeypatch):
    """While UNetStandIn's output layer runs on a step where a unit's model was called, a tensor's
    value on the host (bool, item, float, int) raises; on a step where none was, reads back are
    allowed and counted in `reads` (the count's once-per-generation check, controlnet_bridge.CountCheck).
    Counts the output layer's calls, so a test sees that it ran."""
    calls, reads = _Calls(), []
    original = UNetStandIn._out

    def out(self, h):
        calls.append(1)
        with pytest.MonkeyPatch.context() as patch:
            for name in ("__bool__", "item", "__float__", "__int__"):
                if self._calls.count > 0:
                    patch.setattr(torch.Tensor, name, _read_back)
                else:
                    patch.setattr(torch.Tensor, name, _counted(getattr(torch.Tensor, name), reads))
            return original(self, h)
    monkeypatch.setattr(UNetStandIn, "_out", out)
    calls.reads = reads
    return calls


class _Calls(list):
    reads: list


def _counted(method, reads):
    def read(self, *args, **kwargs):
        reads.append(1)
        return method(self, *args, **kwargs)
    return read


def test_a_served_controlnet_step_reads_nothing_back_from_the_device(webui, no_read_back):
    runner, _ = webui()
    make = lambda: ControlNetScript(units((1, 0.8, 0.0, 1.0), (3, 0.6, 0.0, 1.0, "adapter")), params=True)
    fast, ref, diff = compare(runner, make)
    plain = generate(runner, "None")
    assert max((a - b).abs().max().item() for a, b in zip(ref.images, plain.images)) > 0.05
    assert len(no_read_back) == 4  # each of the 4 steps through the output layer
    assert diff < TOL
    assert routing(fast) == f"{WITH_INPUTS}; {UNKNOWN_CLASS}; ControlNet unit 2: eager (T2I_Adapter models have no engines)"


def test_steps_outside_every_units_guidance_use_the_plain_engine_by_the_count(webui, no_read_back):
    runner, _ = webui()
    fast, ref, diff = compare(runner, lambda: ControlNetScript(units((1, 1.0, 0.25, 0.5)), params=True))
    assert diff < TOL
    assert len(no_read_back) == 4
    assert len(no_read_back.reads) == 1  # the first step without a call checks the count, once
    assert routing(fast) == f"{PLAIN} (2 calls), {WITH_INPUTS} (2 calls); {UNKNOWN_CLASS}"


def test_a_controlnet_that_adds_residuals_without_a_counted_call_is_caught_and_served_right(webui, no_read_back,
                                                                                             monkeypatch, caplog):
    """A ControlNet version whose residuals do not come from the units' model calls (simulated: the
    calls go uncounted): the once-per-generation check finds residuals where the count said none,
    and from then on every uncounted step is read on the device; the image is ControlNet's."""
    monkeypatch.setattr(controlnet_bridge, "_COUNT", controlnet_bridge.CountCheck())
    original_call = controlnet_served.EngineControlModel.__call__

    def uncounted(self, *args, **kwargs):
        self._calls.count -= 1  # undone: the call goes unseen
        return original_call(self, *args, **kwargs)
    monkeypatch.setattr(controlnet_served.EngineControlModel, "__call__", uncounted)
    runner, _ = webui()
    fast, ref, diff = compare(runner, lambda: ControlNetScript(units((1, 1.0, 0.0, 1.0)), params=True))
    plain = generate(runner, "None")
    assert max((a - b).abs().max().item() for a, b in zip(ref.images, plain.images)) > 0.05
    assert diff < TOL
    assert len(no_read_back.reads) == 4  # every step checked once the count proved unreliable
    assert "added residuals on a step where no unit's model was called" in caplog.text


def test_a_unit_of_weight_0_gives_the_built_in_unets_image(webui, no_read_back):
    """Its model is called, so the engine with ControlNet inputs takes its zero residuals: h + 0."""
    runner, _ = webui()
    fast = generate(runner, "Automatic", ControlNetScript(units((1, 0.0, 0.0, 1.0)), params=True))
    plain = generate(runner, "None")
    assert max((a - b).abs().max().item() for a, b in zip(fast.images, plain.images)) < TOL
    assert routing(fast) == f"{WITH_INPUTS}; {UNKNOWN_CLASS}"
