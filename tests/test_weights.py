"""Weights an engine holds: fingerprints, the sync that decides what engines must take, engines
taking changed weights (ONNX Runtime here; TensorRT and torch in their own tests), and the router
handing them out and setting aside an engine that cannot take them."""
from __future__ import annotations

import copy

import pytest
import torch

from sd_unet_trt.models.families import TINY
from sd_unet_trt.trt_core.backends.base import Engine, WeightsUnsupported
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.router import EngineRecord, Router
from sd_unet_trt.trt_core.weight_sync import Merge, WeightSync
from sd_unet_trt.trt_core.weights import SAMPLE, WeightsRecord, fingerprint

PROFILE = Profile.static(1, 64, 64)
Q = "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
CONV = "input_blocks.0.0.weight"


def test_fingerprints_are_the_same_for_a_copy_in_another_dtype_and_differ_for_any_change():
    t = torch.randn(320, 320, generator=torch.Generator().manual_seed(0)).half()
    assert fingerprint(t) == fingerprint(t.float()) == fingerprint(t.float().clone())
    assert fingerprint(t) == fingerprint(t.t().contiguous().t())  # layout does not matter, values do
    low_rank = torch.randn(320, 4) @ torch.randn(4, 320) * 1e-2  # a LoRA's change
    assert fingerprint(t) != fingerprint((t.float() + low_rank).half())
    assert fingerprint(t) != fingerprint(t.reshape(-1)[:-1])
    big = torch.randn(SAMPLE * 4)
    changed = big.clone()
    changed[8] += 1  # an element the sample reads (every 4th)
    assert fingerprint(big) != fingerprint(changed)


def test_sync_gives_changed_weights_then_the_originals_back_and_is_quiet_when_nothing_changed():
    base = {"a": torch.ones(4, 4), "b": torch.zeros(4)}
    record = WeightsRecord.of(base, "test", "0" * 64)
    sync = WeightSync(record, torch.device("cpu"))

    def keys():
        return {name: (id(t), t._version) for name, t in base.items()}

    assert sync.update(base, keys(), Merge()) == {}  # first look: engines hold these already
    assert sync.update(base, keys(), Merge()) is None
    double = Merge(frozenset({"a"}), lambda originals: {"a": originals["a"] * 2}, key=("lora", 1.0))
    targets = sync.update(base, keys(), double)
    assert set(targets) == {"a"} and torch.equal(targets["a"], base["a"] * 2)
    assert sync.update(base, keys(), double) is None
    targets = sync.update(base, keys(), Merge())  # the network is off again: the original goes back
    assert set(targets) == {"a"} and torch.equal(targets["a"], torch.ones(4, 4))
    assert sync.update(base, keys(), Merge()) is None
    with torch.no_grad():
        base["b"] += 1  # another extension changes a weight in place
    targets = sync.update(base, keys(), Merge())
    assert set(targets) == {"b"} and torch.equal(targets["b"], torch.ones(4)) and sync.changed == {"b"}
    with torch.no_grad():
        base["b"] -= 1  # and back to the file's value (a new version, the same fingerprint)
    assert set(sync.update(base, keys(), Merge())) == {"b"} and sync.changed == set()
    assert targets["b"] is not base["b"]  # engines get copies: the host may change its tensors later


def test_onnx_runtime_engine_runs_with_changed_weights_and_goes_back(exported):
    unet, path = exported("tiny")
    engine = OnnxRuntimeBackend().load(path, "tiny", TINY, PROFILE, device="cpu")
    args = (torch.randn(2, 4, 8, 8), torch.tensor([10.0, 500.0]), torch.randn(2, 77, 768))
    changed = copy.deepcopy(unet)
    with torch.no_grad():
        changed.get_parameter(Q).add_(torch.randn(changed.get_parameter(Q).shape) * 0.05)
        changed.get_parameter(CONV).mul_(1.5)
        expected, original = changed(*args), unet(*args)
    engine.set_weights({Q: changed.get_parameter(Q), CONV: changed.get_parameter(CONV)})
    assert torch.allclose(engine(*args), expected, atol=1e-4)
    engine.set_weights({Q: unet.get_parameter(Q), CONV: unet.get_parameter(CONV)})
    assert torch.allclose(engine(*args), original, atol=1e-4)
    with pytest.raises(WeightsUnsupported, match="no weight"):
        engine.set_weights({"not.a.weight": torch.zeros(1)})
    with pytest.raises(WeightsUnsupported, match=r"the new value is \[3, 3\]"):
        engine.set_weights({Q: torch.zeros(3, 3)})
    assert torch.allclose(engine(*args), original, atol=1e-4)  # a refused change leaves it as it was
    engine.close()


class Fixed(Engine):
    """An engine whose output is its one weight, to see what the router gave it."""

    def __init__(self, name, refittable=True):
        self.name, self.family, self.profile = name, TINY, PROFILE
        self.refittable, self.value = refittable, torch.zeros(())

    def __call__(self, x, timesteps, context, y=None):
        return torch.full_like(x, float(self.value))

    def set_weights(self, weights):
        if not self.refittable:
            raise WeightsUnsupported("no refit")
        self.value = weights["w"]


def test_router_gives_weights_to_loaded_and_later_loaded_engines_and_skips_those_that_cannot():
    a, b = Fixed("a"), Fixed("b", refittable=False)
    router = Router([EngineRecord("b", TINY, PROFILE, lambda: b), EngineRecord("a", TINY, PROFILE, lambda: a)])
    args = (torch.zeros(1, 4, 8, 8), torch.zeros(1), torch.zeros(1, 77, 768))
    assert router.run(*args).engine == "b"  # both cover the call; b is listed first
    assert router.set_weights({"w": torch.tensor(3.0)}) == {"b": "no refit"}
    result = router.run(*args)
    assert result.engine == "a" and float(result.output[0, 0, 0, 0]) == 3.0  # loaded after: took them on load
    router.set_weights({})  # back to the build's weights: every engine may serve again
    assert router.run(*args).engine == "b"


def test_when_no_engine_can_take_the_weights_the_call_is_not_covered_and_says_why():
    b = Fixed("b", refittable=False)
    router = Router([EngineRecord("b", TINY, PROFILE, lambda: b)])
    args = (torch.zeros(1, 4, 8, 8), torch.zeros(1), torch.zeros(1, 77, 768))
    router.set_weights({"w": torch.tensor(3.0)})  # b is not loaded yet: it is refused when it loads
    result = router.run(*args)
    assert not result.covered and "cannot take the changed weights (no refit)" in result.reason


class Held(Fixed):
    """An engine that can give the values it was built with."""

    def set_weights(self, weights):
        self.given = dict(weights)

    def weights_of(self, names):
        return {name: torch.full((4,), 7.0) for name in names if name == "a"}


def test_originals_come_from_the_engines_where_they_hold_them_in_the_hosts_dtype():
    base = {"a": torch.ones(4), "b": torch.ones(4)}
    keys = {name: (id(t), t._version) for name, t in base.items()}
    router = Router.from_engines([Held("e")])
    assert list(router.build_weights(["a", "b"])) == ["a"]
    sync = WeightSync(WeightsRecord.of(base, "test", "0" * 64), torch.device("cpu"))
    sync.update(base, keys, Merge(), router.build_weights)
    add = Merge(frozenset({"a", "b"}), lambda originals: {n: v + 1 for n, v in originals.items()}, key=1)
    targets = sync.update(base, keys, add, router.build_weights)
    # "a" from the engine (7 + 1, and a copy: the engine's view is not what the merge got), "b" from the host
    assert targets["a"].tolist() == [8.0] * 4 and targets["b"].tolist() == [2.0] * 4
    router.set_weights(targets)
    assert router.build_weights(["a"]) == {}  # the engine now holds other values for it
    # an fp16 host's weights are not taken from an engine's copies of another dtype
    half = {"a": torch.ones(4, dtype=torch.float16)}
    sync = WeightSync(WeightsRecord.of(half, "test", "0" * 64), torch.device("cpu"))
    one = Merge(frozenset({"a"}), lambda originals: dict(originals), key=1)
    assert sync.update(half, {"a": 1}, one, Router.from_engines([Held("e")]).build_weights)["a"].tolist() == [1.0] * 4
