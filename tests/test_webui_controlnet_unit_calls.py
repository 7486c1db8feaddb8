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
from sd_unet_trt.scripts.trt_unet_webui.controlnet_bridge import UNetStandIn

UNKNOWN_CLASS = "ControlNet unit 1: eager (an unknown ControlNet class (TinyControlModel/NoneType))"


def _read_back(*args, **kwargs):
    raise AssertionError("the bridge read a tensor back to the host")


@pytest.fixture
def no_read_back(monkeypatch):
    """While UNetStandIn's output layer runs, a tensor's value on the host (bool, item, float, int)
    raises; counts the output layer's calls, so a test sees that it ran."""
    calls = []
    original = UNetStandIn._out

    def out(self, h):
        calls.append(1)
        with pytest.MonkeyPatch.context() as patch:
            for name in ("__bool__", "item", "__float__", "__int__"):
                patch.setattr(torch.Tensor, name, _read_back)
            return original(self, h)
    monkeypatch.setattr(UNetStandIn, "_out", out)
    return calls


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
    assert routing(fast) == f"{PLAIN} (2 calls), {WITH_INPUTS} (2 calls); {UNKNOWN_CLASS}"


def test_a_unit_of_weight_0_gives_the_built_in_unets_image(webui, no_read_back):
    """Its model is called, so the engine with ControlNet inputs takes its zero residuals: h + 0."""
    runner, _ = webui()
    fast = generate(runner, "Automatic", ControlNetScript(units((1, 0.0, 0.0, 1.0)), params=True))
    plain = generate(runner, "None")
    assert max((a - b).abs().max().item() for a, b in zip(fast.images, plain.images)) < TOL
    assert routing(fast) == f"{WITH_INPUTS}; {UNKNOWN_CLASS}"
