"""A unit's ControlNet on its engine (issue 23): scripts/trt_unet_webui/controlnet_served.py with a
real tiny ControlNet file, its real ONNX Runtime engine (built by trt_core's ControlNet build) and
sd-webui-controlnet's structures as v1.1.455 has them (tests/webui_double/controlnet/model_list.py:
its model list and cache; below: its ControlParams, its forward's closure over the UnetHook, and
classes named as cldm's, holding the file's weights). The real extension in the real WebUI is
checked by tests/real_webui/check_controlnet_in_webui.py."""
from __future__ import annotations

import enum
import types

import pytest
import torch
from safetensors.torch import save_file

from tests.webui_double import harness
from tests.webui_double.controlnet import model_list
from modules import errors, script_loading
from sd_unet_trt.models.controlnet import PREFIX, TINY, ControlNetModel, seeded_controlnet
from sd_unet_trt.scripts.trt_unet_webui import controlnet_served, generation
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.controlnet.build import build_controlnet_engine
from sd_unet_trt.trt_core.controlnet.source import load_controlnet
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.workspace import Workspace

PROFILE = Profile(Range(1, 2, 2), Range(64, 64, 64), Range(64, 64, 64), Range(75, 75, 75))
NAME, OTHER = "tiny_control_a [0123abcd]", "tiny_control_b [4567ef01]"


class ControlModelType(enum.Enum):  # scripts/enums.py
    ControlNet = "ControlNet, Lvmin Zhang"
    T2I_Adapter = "T2I_Adapter, Chong Mou"


class ControlNet(ControlNetModel):
    """cldm.ControlNet's name and call: casts its inputs to its dtype, returns x's dtype."""

    def forward(self, x, hint, timesteps, context, y=None, control_type=None, **kwargs):
        dtype = next(self.parameters()).dtype
        outs = super().forward(x.to(dtype), hint.to(dtype), timesteps, context.to(dtype), y)
        return [o.to(x.dtype) for o in outs]


class PlugableControlModel(torch.nn.Module):
    """cldm.PlugableControlModel: forward calls its `control_model`."""

    def __init__(self, inner):
        super().__init__()
        self.control_model = inner
        self.is_control_lora = False

    def forward(self, *args, **kwargs):
        return self.control_model(*args, **kwargs)


def controlnet_forward(params):
    """A forward as ControlNet's hook makes it: a closure over `outer`, whose control_params it reads."""
    outer = types.SimpleNamespace(control_params=params)

    def forward_webui(*args, **kwargs):
        return [p.control_model(**kwargs) for p in outer.control_params]
    return forward_webui


def param(model, kind=ControlModelType.ControlNet):
    return types.SimpleNamespace(control_model=model, control_model_type=kind)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two tiny ControlNet files (seeded weights); an ONNX Runtime fp32 engine of the first."""
    root = tmp_path_factory.mktemp("cn")
    paths = {}
    for seed, name in enumerate((NAME, OTHER), start=1):
        model = seeded_controlnet(TINY, seed)
        paths[name] = root / "ControlNet" / f"{name.split(' [')[0]}.safetensors"
        paths[name].parent.mkdir(exist_ok=True)
        save_file({PREFIX + k: v.contiguous() for k, v in model.state_dict().items()}, str(paths[name]))
    build_controlnet_engine(Workspace(root), paths[NAME], PROFILE, OnnxRuntimeBackend(), "fp32", device="cpu")
    return root, paths


def controlnet_script():
    return next(m for m in script_loading.loaded_scripts.values() if hasattr(m, "global_state"))


def loaded(path, cache_name=None) -> PlugableControlModel:
    """The model as ControlNet loads and caches it (by its listed name)."""
    ours, _ = load_controlnet(path)
    inner = ControlNet(TINY)
    inner.load_state_dict(ours.state_dict())
    wrapper = PlugableControlModel(inner.eval().requires_grad_(False))
    if cache_name is not None:
        controlnet_script().Script.model_cache[cache_name] = model_list.ControlModel(wrapper, ControlModelType.ControlNet)
    return wrapper


@pytest.fixture
def webui(files):
    root, paths = files
    harness.reset(root)
    model_list.install(paths)
    generation.begin()
    controlnet_served._engines.clear()
    yield paths
    generation.end()
    model_list.uninstall()
    assert not errors.reported, errors.reported


def call_inputs(rows=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(rows, 4, 8, 8, generator=g), "hint": torch.rand(rows, 3, 64, 64, generator=g),
            "timesteps": torch.tensor([500.0] * rows), "context": torch.randn(rows, 77, 768, generator=g), "y": None}


def run(params, **inputs):
    forward = controlnet_forward(params)
    with controlnet_served.units_on_engines(forward):
        return forward(**inputs)


@pytest.mark.parametrize("hint_rows", [2, 1], ids=["a hint per row", "one hint for every row, as ControlNet passes it"])
def test_a_unit_with_an_engine_runs_on_it_and_gives_the_models_outputs(webui, hint_rows):
    model = loaded(webui[NAME], NAME)
    inputs = call_inputs()
    inputs["hint"] = inputs["hint"][:hint_rows]
    expected = model(**inputs)
    unit = param(model)
    outputs = run([unit], **inputs)[0]
    assert len(outputs) == len(expected)
    assert max((a - b).abs().max().item() for a, b in zip(outputs, expected)) < 1e-3
    assert unit.control_model is model  # given back after the call
    notes = generation.current().notes
    assert notes == [f"ControlNet {NAME}: [onnxruntime fp32] {PROFILE.label()}"], notes


def test_what_no_engine_can_stand_for_runs_the_model_with_its_reason(webui):
    """Another file without engine, a model the cache dropped, a model whose weights changed in
    memory, another kind, extra inputs, shapes no engine covers: the model's own outputs."""
    other = loaded(webui[OTHER], OTHER)
    dropped = loaded(webui[OTHER])  # not in ControlNet's cache, and no file with engines holds its weights
    changed = loaded(webui[NAME], NAME + " changed")
    controlnet_script().global_state.cn_models[NAME + " changed"] = str(webui[NAME])
    with torch.no_grad():
        changed.control_model.zero_convs[0][0].weight.mul_(1.5)
    adapter = loaded(webui[NAME], NAME + " adapter")
    cases = [(param(other), f"ControlNet {OTHER}: eager (no ControlNet engine of {webui[OTHER].name}"),
             (param(dropped), "ControlNet unit 1: eager (its file is unknown (ControlNet's model cache no longer holds it, and no "
              "ControlNet file with engines holds its weights)"),
             (param(changed), f"eager (the loaded ControlNet's weights differ from {webui[NAME].name} (zero_convs.0.0.weight)"),
             (param(adapter, ControlModelType.T2I_Adapter), "eager (T2I_Adapter models have no engines)")]
    inputs = call_inputs()
    for unit, reason in cases:
        expected = unit.control_model(**inputs)
        outputs = run([unit], **inputs)[0]
        assert all(torch.equal(a, b) for a, b in zip(outputs, expected))
        assert any(reason in n for n in generation.current().notes), (reason, generation.current().notes)
    served = param(loaded(webui[NAME], NAME))
    evicted = param(loaded(webui[NAME]))  # ControlNet's cache dropped it: found by its weights, served
    outputs = run([evicted], **inputs)[0]
    assert max((a - b).abs().max().item() for a, b in zip(outputs, evicted.control_model(**inputs))) < 1e-3
    assert generation.current().notes[-1] == f"ControlNet {NAME}: [onnxruntime fp32] {PROFILE.label()}"
    wide = dict(call_inputs(), x=torch.randn(2, 4, 16, 16), hint=torch.rand(2, 3, 128, 128))
    assert all(torch.equal(a, b) for a, b in zip(run([served], **wide)[0], served.control_model(**wide)))
    assert any(n.startswith(f"ControlNet {NAME}: eager (no ControlNet engine") for n in generation.current().notes)
    forward = controlnet_forward([served])
    with controlnet_served.units_on_engines(forward):
        union = served.control_model(**call_inputs(), control_type=[1])
    assert all(torch.equal(a, b) for a, b in zip(union, served.control_model(**call_inputs())))
    assert any("inputs engines do not take (control_type)" in n for n in generation.current().notes)


def test_every_unit_has_its_model_back_when_the_forward_raises(webui):
    units = [param(loaded(webui[NAME], NAME)), param(loaded(webui[OTHER], OTHER))]
    models = [u.control_model for u in units]
    forward = controlnet_forward(units)
    with pytest.raises(RuntimeError, match="the forward failed"):
        with controlnet_served.units_on_engines(forward):
            assert all(type(u.control_model) is controlnet_served.EngineControlModel for u in units)
            assert all(isinstance(u.control_model, torch.nn.Module) for u in units)  # ControlNet's own checks
            raise RuntimeError("the forward failed")
    assert [u.control_model for u in units] == models


def test_the_units_model_calls_are_counted_and_known_only_where_every_call_counts_here(webui):
    """Served or eager, each call counts; a forward inside another's (its units already stand-ins,
    counting for the outer one), a forward without units or with none holding a model: unknown."""
    units = [param(loaded(webui[NAME], NAME)), param(loaded(webui[OTHER], OTHER))]
    forward = controlnet_forward(units)
    with controlnet_served.units_on_engines(forward) as calls:
        assert (calls.count, calls.known) == (0, True)
        forward(**call_inputs())
        assert calls.count == 2
        with controlnet_served.units_on_engines(forward) as inner:
            forward(**call_inputs())
        assert (inner.known, calls.count) == (False, 4)
    without_models = controlnet_forward([param(None)])
    for other in (lambda **inputs: None, without_models):
        with controlnet_served.units_on_engines(other) as unknown:
            assert not unknown.known


def test_weights_written_in_place_after_a_served_call_are_found_before_the_next(webui):
    """The proof is remembered per module and state of its weights: an in-place write (a version
    bump) or a cast is proven again, so the engine does not stand for weights it does not hold."""
    unit = param(loaded(webui[NAME], NAME))
    inputs = call_inputs()
    run([unit], **inputs)
    assert generation.current().notes == [f"ControlNet {NAME}: [onnxruntime fp32] {PROFILE.label()}"]
    with torch.no_grad():
        unit.control_model.control_model.middle_block_out[0].bias.add_(0.25)
    outputs = run([unit], **inputs)[0]
    assert all(torch.equal(a, b) for a, b in zip(outputs, unit.control_model(**inputs)))
    assert generation.current().notes[-1] == (f"ControlNet {NAME}: eager (the loaded ControlNet's weights differ from "
                                              f"{webui[NAME].name} (middle_block_out.0.bias))")
