"""Patches made outside the UNet's layers (issue 19), in the WebUI double. A replacement of `th.cat`
made the way sd-webui-freeu makes it (functools.partial of its free_u_cat_hijack, set on the
WebUI's `th` object from its extension folder) falls back with the reason while FreeU is on, and
engines serve while it is off, whether FreeU loaded before or after this extension; an unknown
extension's replacement of a torch function falls back naming it; Hypertile switched on falls back,
and once it is off again (its wrappers stay on the layers) engines serve again."""
from __future__ import annotations

import sys
import textwrap

import pytest
import torch

from tests.webui_double import harness
from tests.webui_double.harness import register_ort_engines, webui_unet
from modules import errors, paths_internal, processing, sd_hijack_unet, shared
from sd_unet_trt.scripts.trt_unet_webui import forward_names
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.workspace import Workspace

SHA = "cd" * 32
PROFILE = Profile(Range(1, 1, 2), Range(64, 64, 64), Range(64, 64, 64), Range(75, 75, 150))
ENGINE = "[onnxruntime fp32] 64x64 px"
TOL = 1e-3
FREEU_FILES = {  # the names and the patch of sd-webui-freeu's lib_free_u, its effect simplified
    "lib_free_u/__init__.py": "",
    "lib_free_u/global_state.py": """
        class State:
            enable = True


        instance = State()
        """,
    "lib_free_u/unet.py": """
        import functools

        from lib_free_u import global_state
        from modules.sd_hijack_unet import th


        def patch():
            th.cat = functools.partial(free_u_cat_hijack, original_function=th.cat)


        def free_u_cat_hijack(hs, *args, original_function, **kwargs):
            if not global_state.instance.enable:
                return original_function(hs, *args, **kwargs)
            h, h_skip = hs
            return original_function([h * 1.2, h_skip], *args, **kwargs)
        """,
}
OTHER_FILES = {
    "other_patch.py": """
        import torch

        group_norm = torch.nn.functional.group_norm


        def patched_group_norm(*args, **kwargs):
            return group_norm(*args, **kwargs)
        """,
}
FREEU_REASON = "fallback: FreeU (sd-webui-freeu) replaces th.cat in the UNet's forward"


def write_extension(folder, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))


@pytest.fixture(scope="module")
def session(tmp_path_factory, exported):
    """The tiny checkpoint with an ONNX Runtime engine; an extensions folder with FreeU's files."""
    unet, onnx_path = exported("tiny")
    root = tmp_path_factory.mktemp("webui-forward-patches")
    register_ort_engines(Workspace(root), onnx_path, "tiny", CheckpointId.of(SHA, "tiny"), [PROFILE])
    extensions, saved = root / "extensions", paths_internal.extensions_dir
    write_extension(extensions / "sd-webui-freeu", FREEU_FILES)
    write_extension(extensions / "sd-webui-other", OTHER_FILES)
    paths_internal.extensions_dir = str(extensions)
    runner, model = harness.start(root, webui_unet(unet), "tiny", SHA)  # the snapshot is taken here
    yield runner, model, extensions
    harness.stop()
    paths_internal.extensions_dir = saved


@pytest.fixture
def webui(session):
    harness.reset_options()
    yield session
    assert not errors.reported, errors.reported


def import_from(folder, module: str):
    """An extension's module imported as the WebUI's script loader imports it (its folder first on
    sys.path); forgotten again when the test ends."""
    sys.path.insert(0, str(folder))
    try:
        __import__(module)
    finally:
        sys.path.remove(str(folder))
    return sys.modules[module]


@pytest.fixture
def freeu(session):
    _, _, extensions = session
    unet = import_from(extensions / "sd-webui-freeu", "lib_free_u.unet")
    yield unet
    vars(sd_hijack_unet.th).pop("cat", None)  # the WebUI's own th.cat again
    for name in [n for n in sys.modules if n.split(".")[0] == "lib_free_u"]:
        del sys.modules[name]


def generate(runner, unet_option: str):
    shared.opts.data["sd_unet"] = unet_option
    p = processing.StableDiffusionProcessingTxt2Img(scripts=runner, prompt="a cat", width=64, height=64, steps=2,
                                                    cfg_scale=5.0, seed=3)
    return processing.process_images(p)


def run_both(runner) -> tuple[str, float]:
    """(infotext value with the engines, |engines - built-in|)."""
    fast, ref = generate(runner, "Automatic"), generate(runner, "None")
    diff = max((a - b).abs().max().item() for a, b in zip(fast.images, ref.images))
    return fast.infotexts[0].split("TensorRT: ", 1)[1], diff


def freeu_on_off_on(runner, freeu) -> list[str]:
    values = []
    for enable in (True, False, True):
        freeu.global_state.instance.enable = enable
        value, diff = run_both(runner)
        assert diff < TOL, (enable, value, diff)
        values.append(value)
    return values


def test_freeu_loaded_after_this_extension_falls_back_only_while_it_is_on(webui, freeu):
    runner, _, _ = webui
    assert run_both(runner)[0].startswith(ENGINE)  # the WebUI's own state is no patch
    freeu.patch()
    on, off, on_again = freeu_on_off_on(runner, freeu)
    assert on == on_again == FREEU_REASON, (on, on_again)
    assert off.startswith(ENGINE), off


def test_freeu_loaded_before_this_extension_is_recognised_in_the_snapshot(webui, freeu):
    runner, _, _ = webui
    freeu.patch()
    forward_names.take_snapshot()  # this extension loading after FreeU
    try:
        on, off, on_again = freeu_on_off_on(runner, freeu)
    finally:
        vars(sd_hijack_unet.th).pop("cat", None)
        forward_names.take_snapshot()
    assert on == on_again == FREEU_REASON, (on, on_again)
    assert off.startswith(ENGINE), off


def test_an_unknown_extensions_replacement_falls_back_naming_it(webui, monkeypatch):
    runner, _, extensions = webui
    other = import_from(extensions / "sd-webui-other", "other_patch")
    monkeypatch.setattr(torch.nn.functional, "group_norm", other.patched_group_norm)
    try:
        value, diff = run_both(runner)
    finally:
        monkeypatch.undo()
        del sys.modules["other_patch"]
    assert diff < TOL
    assert value == "fallback: an extension (sd-webui-other) replaces torch.nn.functional.group_norm in the UNet's forward"
    assert run_both(runner)[0].startswith(ENGINE)  # put back: engines serve again


def test_hypertile_on_falls_back_and_off_serves_again(webui):
    import hypertile

    runner, model, _ = webui
    wrapper = model.model

    def configure(enable: bool) -> None:  # as the Hypertile script's process() does before each generation
        hypertile.hypertile_hook_model(wrapper, 64, 64, enable=enable, tile_size_max=256, swap_size=3, max_depth=3)

    try:
        configure(True)
        on, diff_on = run_both(runner)
        configure(False)
        off, diff_off = run_both(runner)
        layer = wrapper.diffusion_model.input_blocks[1][1].transformer_blocks[0].attn1
        still_wrapped = "forward" in vars(layer)
    finally:
        for module in wrapper.modules():
            for name in ("forward", "__webui_hypertile_params", "__webui_hypertile_layers"):
                vars(module).pop(name, None)
    assert diff_on < TOL and diff_off < TOL
    assert still_wrapped and off.startswith(ENGINE), off
    assert on == ("fallback: Hypertile is on (UNet layer input_blocks.1.1.transformer_blocks.0.attn1); "
                  "engines do not tile attention"), on


def test_hypernetworks_fall_back_naming_them(webui):
    """The WebUI applies `shared.loaded_hypernetworks` in its attention code on every UNet call (the
    double's attention does not, so only the routing is checked here): such a pass runs the
    built-in UNet, and engines serve again once none is loaded."""
    runner, _, _ = webui

    class Hypernetwork:
        name = "anime_3"

    shared.loaded_hypernetworks.append(Hypernetwork())
    try:
        with_net, _ = run_both(runner)
    finally:
        shared.loaded_hypernetworks.clear()
    assert with_net == "fallback: hypernetworks (anime_3) act in the UNet's attention; engines do not take them", with_net
    assert run_both(runner)[0].startswith(ENGINE)
