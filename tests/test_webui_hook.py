"""The SdUnet hook in the WebUI double: every row of docs/DESIGN.md's call table, per-call fallback,
infotext, the pre-generation warning, --medvram/--lowvram, checkpoint switches, SD3, 9-channel
inpainting and SDXL-shaped (y) UNets, and engines written by the pipeline.

Engines are real ONNX Runtime engines of tiny UNets exported once per session (conftest's
`exported`), listed in a manifest; each scenario is run with sd_unet "Automatic" and with "None"
(the built-in UNet) and the latents compared. Like one WebUI process serving request after
request, the `webui` fixture keeps the extension, the checkpoint and the loaded engines from test
to test and resets only options; tests that change more (checkpoints, --medvram hooks, another
models folder) start their own with `fresh_webui`."""
from __future__ import annotations

import shutil

import pytest
import torch

from tests.webui_double import harness
from tests.webui_double.harness import checkpoint, load, register_ort_engines, webui_unet
from modules import errors, lowvram, processing, sd_unet, shared
from sd_unet_trt.models import unet as arch
from sd_unet_trt.models.families import TINY
from sd_unet_trt.trt_core.backends import get_backend
from sd_unet_trt.trt_core.catalog import engine_label
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.unet_source import ModuleUNet
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.workspace import Workspace

SHA = "ab" * 32
OTHER_SHA = "cd" * 32
INPAINT_SHA = "12" * 32
XL_SHA = "34" * 32
SMALL = Profile(Range(1, 1, 2), Range(64, 64, 80), Range(64, 64, 80), Range(75, 75, 150))
LARGE = Profile(Range(1, 1, 2), Range(128, 128, 128), Range(128, 128, 128), Range(75, 75, 150))
TOL = 1e-3
LONG = " ".join(["word"] * 100)  # 100 tokens in the double's tokenizer: 2 chunks, context 154


@pytest.fixture(scope="session")
def tiny_source(exported):
    """The UNet the "tiny" checkpoint holds, and the ONNX its engines are built from."""
    return exported("tiny")


@pytest.fixture(scope="session")
def engines_dir(tmp_path_factory, tiny_source):
    root = tmp_path_factory.mktemp("webui-models")
    register_ort_engines(Workspace(root), tiny_source[1], "tiny", CheckpointId.of(SHA, "tiny"), [SMALL, LARGE])
    return root


@pytest.fixture(scope="module")
def live():
    """The session the `webui` fixture keeps between tests (empty until one starts it)."""
    state = {}
    yield state
    if state:
        harness.stop()


@pytest.fixture
def webui(live, engines_dir, tiny_source):
    if not live:
        live["session"] = harness.start(engines_dir, webui_unet(tiny_source[0]), "tiny", SHA)
    else:
        harness.reset_options()
    yield live["session"]
    assert not errors.reported, errors.reported


@pytest.fixture
def fresh_webui(live, engines_dir, tiny_source):
    """Starts a WebUI session of its own (by default: the "tiny" checkpoint over engines_dir);
    the kept one is stopped first and started again by the next test using `webui`."""
    if live:
        harness.stop()
        live.clear()
    started = []

    def start(models_path=engines_dir, source=tiny_source[0], name="tiny", sha256=SHA, sgm=False):
        started.append(True)
        return harness.start(models_path, webui_unet(source, sgm), name, sha256, sgm=sgm)
    yield start
    if started:
        harness.stop()
    assert not errors.reported, errors.reported


def generate(runner, unet_option: str, **fields):
    shared.opts.data["sd_unet"] = unet_option
    test_size = {"prompt": "a cat", "width": 64, "height": 64, "steps": 2, "cfg_scale": 5.0, "seed": 1}
    p = processing.StableDiffusionProcessingTxt2Img(scripts=runner, **{**test_size, **fields})
    out = processing.process_images(p)
    return p, out


def compare(runner, **fields):
    """(engine run, built-in run): the processed results with sd_unet Automatic and None."""
    p, fast = generate(runner, "Automatic", **fields)
    _, ref = generate(runner, "None", **fields)
    diff = max((a - b).abs().max().item() for a, b in zip(fast.images, ref.images))
    return p, fast, ref, diff


def trt_value(out) -> str:
    text = out.infotexts[0]
    assert "TensorRT: " in text, text
    return text.split("TensorRT: ", 1)[1]


SMALL_LABEL = "64-80x64-80 px"
LARGE_LABEL = "128x128 px"

COVERED = [
    ("batch 1", dict(), SMALL_LABEL),
    ("batch 2", dict(batch_size=2), SMALL_LABEL),
    ("batch 3, split into chunks", dict(batch_size=3), SMALL_LABEL),
    ("AND prompt", dict(prompt="a cat AND a dog"), SMALL_LABEL),
    ("long prompt, short negative", dict(prompt=LONG), SMALL_LABEL),
    ("72x64", dict(width=72, height=64), SMALL_LABEL),
    ("cond-only steps", dict(cond_only_steps=(0, 1)), SMALL_LABEL),
]


def test_covered_calls_run_on_the_engine(webui):
    """Every covered row of the call table. The rows run on the engines first, then on the built-in
    UNet: switching sd_unet unloads the engines (as in the WebUI), so this loads them once."""
    runner, _ = webui
    fast = {name: generate(runner, "Automatic", **fields) for name, fields, _ in COVERED}
    ref = {name: generate(runner, "None", **fields)[1] for name, fields, _ in COVERED}
    failures = []
    for name, _, label in COVERED:
        p, out = fast[name]
        value = trt_value(out)
        diff = max((a - b).abs().max().item() for a, b in zip(out.images, ref[name].images))
        if label not in value or "fallback" in value:
            failures.append(f"{name}: ran {value!r}")
        if diff >= TOL:
            failures.append(f"{name}: max |engine - built-in| = {diff}")
        if p.comments:  # nothing warned before generation
            failures.append(f"{name}: warned {list(p.comments)}")
        if "TensorRT" in ref[name].infotexts[0]:  # sd_unet None: the built-in UNet, nothing recorded
            failures.append(f"{name}: the built-in run recorded {ref[name].infotexts[0]!r}")
    assert not failures, "\n".join(failures)


def test_pad_cond_uncond_and_batch_cond_uncond_off(webui):
    runner, _ = webui
    shared.opts.data["pad_cond_uncond"] = True
    _, fast, _, diff = compare(runner, prompt=LONG)
    assert SMALL_LABEL in trt_value(fast) and diff < TOL
    shared.opts.data["pad_cond_uncond"] = False
    shared.opts.data["batch_cond_uncond"] = False
    _, fast, _, diff = compare(runner, batch_size=2, prompt="a AND b")
    assert SMALL_LABEL in trt_value(fast) and diff < TOL


def test_hires_fix_uses_one_engine_per_pass(webui):
    runner, _ = webui
    _, fast, _, diff = compare(runner, enable_hr=True, hr_scale=2.0)
    value = trt_value(fast)
    assert SMALL_LABEL in value and LARGE_LABEL in value and "fallback" not in value, value
    assert diff < TOL


@pytest.mark.parametrize("fields,expected", [
    (dict(width=96, height=96), "fallback: no engine covers 96x96 px"),
    (dict(prompt=" ".join(["w"] * 160)), "fallback: no engine covers 64x64 px, 1 rows, 225 tokens"),
], ids=["size", "prompt length"])
def test_uncovered_calls_fall_back_with_one_warning(webui, caplog, fields, expected):
    runner, _ = webui
    p, fast, _, diff = compare(runner, **fields)
    value = trt_value(fast)
    assert expected in value, value
    assert diff < TOL
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and "built-in UNet runs such calls" in r.message]
    assert len(warnings) == 1, [r.message for r in warnings]
    assert "would cover it" in warnings[0].message
    assert any("not covered" in c for c in p.comments)  # warned before generation, not blocked


def test_mixed_generation_lists_engine_and_fallback(webui):
    runner, _ = webui
    _, fast, _, diff = compare(runner, enable_hr=True, hr_scale=1.5)  # 96x96 second pass: no engine
    value = trt_value(fast)
    assert value.startswith(f"first pass: [onnxruntime fp32] {SMALL_LABEL}"), value
    assert "; hires pass: fallback: no engine covers 96x96 px" in value, value
    assert diff < TOL


def test_call_order_and_options(webui):
    runner, _ = webui
    generate(runner, "Automatic")
    order = [x for x in processing.ORDER if x != "unet"]
    assert order[:4] == ["process", "apply_unet", "process_batch", "postprocess"], order
    first = [o for o in sd_unet.unet_options if o.label == "[TRT] tiny"]
    assert len(first) == 1 and first[0].model_name == "tiny"
    sd_unet.list_unets()
    assert [o for o in sd_unet.unet_options if o.label == "[TRT] tiny"][0] is first[0]  # same object: no reload


def test_extra_unet_inputs_fall_back(webui):
    runner, _ = webui
    control = [torch.zeros(1)]
    p, out = generate(runner, "Automatic", extra_kwargs={"control": control})
    # the ldm double's wrapper drops kwargs; use sgm-style kwargs through the hook directly
    unet = sd_unet.current_unet
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.full((2,), 500.0), torch.randn(2, 77, 768)
    out = unet.forward(x, t, ctx, control=control)
    assert out.shape == x.shape
    from sd_unet_trt.scripts.trt_unet_webui import generation
    assert any("control" in reason for part in generation.current().passes.values() for reason in part.fallbacks)


def test_a_broken_manifest_never_breaks_generation(webui, engines_dir):
    runner, _ = webui
    index = engines_dir / "Unet-trt" / "manifest.json"
    saved = index.read_text()
    try:
        index.write_text("{not json")
        sd_unet.list_unets()
        _, out = generate(runner, "Automatic")
        assert len(out.images) == 1
    finally:
        index.write_text(saved)


def test_medvram_and_lowvram(fresh_webui):
    runner, model = fresh_webui()
    _, ref = generate(runner, "None", width=96, height=64, enable_hr=True, hr_scale=2.0)
    for flag in ("medvram", "lowvram"):
        sd_unet.apply_unet("None")
        model.lowvram = False
        setattr(shared.cmd_opts, flag, True)
        lowvram.apply(model)
        _, fast = generate(runner, "Automatic", width=96, height=64, enable_hr=True, hr_scale=2.0)
        value = trt_value(fast)
        assert "fallback" in value, value  # 96x64 has no engine
        diff = max((a - b).abs().max().item() for a, b in zip(fast.images, ref.images))
        assert diff < TOL, (flag, diff)
        setattr(shared.cmd_opts, flag, False)


@pytest.fixture(scope="module")
def other_source():
    """The weights of a checkpoint that has no engines."""
    return arch.seeded_unet(arch.TINY, seed=5)


def test_switching_checkpoints_switches_engines(fresh_webui, engines_dir, tiny_source, other_source):
    runner, _ = fresh_webui()
    files = sorted(p.name for p in (engines_dir / "Unet-trt").iterdir())
    generate(runner, "Automatic")
    assert sd_unet.current_unet is not None and sd_unet.current_unet.checkpoints[SHA].router is not None
    load(webui_unet(other_source), checkpoint("other", OTHER_SHA))
    _, out = generate(runner, "Automatic")
    assert sd_unet.current_unet is None and "TensorRT" not in out.infotexts[0]
    load(webui_unet(tiny_source[0]), checkpoint("tiny", SHA))
    _, out = generate(runner, "Automatic")
    assert SMALL_LABEL in trt_value(out)
    assert sorted(p.name for p in (engines_dir / "Unet-trt").iterdir()) == files  # loaded, not rebuilt


def test_engines_of_another_checkpoint_never_serve(fresh_webui, other_source):
    """An explicitly chosen [TRT] option while another checkpoint (or SD3) is loaded: the engine UNet
    serves the loaded checkpoint's engines, and that one has none: built-in UNet."""
    runner, _ = fresh_webui()
    load(webui_unet(other_source), checkpoint("other", OTHER_SHA))
    _, out = generate(runner, "[TRT] tiny")
    assert trt_value(out) == "fallback: no engines for checkpoint other"
    model = load(webui_unet(other_source), checkpoint("sd3", "ef" * 32), is_sd3=True)
    shared.opts.data["sd_unet"] = "[TRT] tiny"
    sd_unet.apply_unet()
    sd_unet.current_unet.prepare()
    assert sd_unet.current_unet.problem.startswith("SD3")
    assert all(p.device == torch.device("cpu") for p in model.model.diffusion_model.parameters())


def test_inpainting_and_y_are_routed(fresh_webui, exported, tmp_path):
    """A 9-channel inpainting UNet (ldm) and an SDXL-shaped UNet taking y (sgm), each with its own
    checkpoint and engine: "Automatic" picks the loaded checkpoint's engine, which serves every call."""
    workspace = Workspace(tmp_path)
    cases = [("tiny-inpaint", INPAINT_SHA, False), ("tiny-xl", XL_SHA, True)]
    entries = {name: register_ort_engines(workspace, exported(name)[1], name, CheckpointId.of(sha, name), [SMALL])[0]
               for name, sha, _ in cases}
    runner = None
    for name, sha, sgm in cases:
        source = exported(name)[0]
        if runner is None:
            runner, _ = fresh_webui(tmp_path, source, name, sha, sgm)
        else:  # a checkpoint switch: the extension lists the new checkpoint's engines before generating
            load(webui_unet(source, sgm), checkpoint(name, sha), sgm=sgm)
        _, fast, _, diff = compare(runner, batch_size=2)
        assert trt_value(fast) == engine_label(entries[name]), name
        assert diff < TOL, (name, diff)


def test_engines_built_by_the_pipeline_serve_generations(fresh_webui, tiny_source, tmp_path):
    """The one test through trt_core.pipeline (verify -> build -> verify -> manifest): what it
    writes is what the hook loads. The export is the session's (ensure_onnx reuses an ONNX in
    place; test_export.py and test_pipeline.py cover exporting)."""
    unet, onnx_path = tiny_source
    workspace, ckpt = Workspace(tmp_path), CheckpointId.of(SHA, "tiny")
    shutil.copytree(onnx_path.parent, workspace.onnx_folder(ckpt, TINY, "fp32"))
    entry = build_engine(ModuleUNet(unet, ckpt, TINY), SMALL, get_backend("onnxruntime"), workspace, precision="fp32",
                         device="cpu")
    runner, _ = fresh_webui(tmp_path)
    _, fast, _, diff = compare(runner, batch_size=2)
    assert trt_value(fast) == engine_label(entry)
    assert diff < TOL
