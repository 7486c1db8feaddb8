"""The export form's validation, presets and choices; the engine table's lookup; the estimate."""
from __future__ import annotations

from pathlib import Path

import pytest

from sd_unet_trt.models.families import FAMILIES, TINY
from sd_unet_trt.trt_core.backends.base import Availability
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.catalog import CatalogItem
from sd_unet_trt.trt_core.estimate import estimate
from sd_unet_trt.trt_core.manifest import CheckpointId, EngineEntry, EngineStatus
from sd_unet_trt.trt_core.profiles import Profile, Range, presets_for
from sd_unet_trt.trt_core.workspace import Workspace
from sd_unet_trt.ui.engines import engine_rows, which_engine
from sd_unet_trt.ui.form import backend_choices, check_fields, preset_named, presets, profile_fields

GOOD = [1, 1, 4, 512, 512, 768, 512, 512, 768, 75, 75, 150]


def test_good_fields_make_the_profile():
    check = check_fields(GOOD)
    assert check.ok and check.problems == {}
    assert check.profile == Profile(Range(1, 1, 4), Range(512, 512, 768), Range(512, 512, 768), Range(75, 75, 150))


def test_number_boxes_send_floats_and_text():
    assert check_fields([float(v) for v in GOOD]).profile == check_fields(GOOD).profile
    assert check_fields([str(v) for v in GOOD]).profile == check_fields(GOOD).profile


@pytest.mark.parametrize("index, value, field, words", [
    (5, 772, "height", "multiples of 8"),
    (8, 770, "width", "multiples of 8"),
    (11, 160, "tokens", "multiples of 75"),
    (3, 520, "height", "min <= opt <= max"),
    (1, 5, "batch", "min <= opt <= max"),
    (5, 8192, "height", "within 64-4096"),
    (0, None, "batch", "whole numbers"),
    (4, 512.5, "height", "whole numbers"),
    (7, "wide", "width", "whole numbers"),
    (2, 64, "batch", "within 1-32"),
])
def test_each_bad_field_gets_its_own_message(index, value, field, words):
    values = list(GOOD)
    values[index] = value
    check = check_fields(values)
    assert not check.ok and words in check.message(field), check.problems
    assert set(check.problems) == {field}
    assert check.summary().startswith({"batch": "Batch size", "height": "Height", "width": "Width",
                                       "tokens": "Prompt tokens"}[field])


def test_several_fields_wrong_at_once():
    values = list(GOOD)
    values[8], values[11] = 764, 100
    assert set(check_fields(values).problems) == {"width", "tokens"}


def test_wrong_field_count_is_a_programming_error():
    with pytest.raises(ValueError):
        check_fields(GOOD[:11])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_presets_fit_the_family_default_first(family):
    fam = FAMILIES[family]
    offered = presets(fam)
    assert offered and offered[0].name.startswith("Default")
    assert [p.name for p in offered] == [p.name for p in presets_for(fam)]
    for preset in offered:
        assert check_fields(profile_fields(preset.profile)).profile == preset.profile
    assert preset_named(fam, "no such preset") == offered[0]
    assert preset_named(fam, offered[-1].name) == offered[-1]


def test_sdxl_presets_are_not_sd15_sizes():
    names = " ".join(p.name for p in presets(FAMILIES["sdxl"]))
    assert "1024" in names and "Static 512x512" not in names


def test_backend_choices_keep_order_and_reasons():
    class Missing(OnnxRuntimeBackend):
        name = "tensorrt"

        def availability(self):
            return Availability(False, "pip install tensorrt")

    class Broken(OnnxRuntimeBackend):
        name = "torch"

        def availability(self):
            raise OSError("libcuda.so: cannot open shared object file")

    choices = backend_choices([Missing(), Broken(), OnnxRuntimeBackend()])
    assert [(c.name, c.available) for c in choices] == [("tensorrt", False), ("torch", False), ("onnxruntime", True)]
    assert choices[0].reason == "pip install tensorrt" and "libcuda" in choices[1].reason
    real = backend_choices()
    assert real[0].name == "tensorrt" and any(c.name == "onnxruntime" and c.available for c in real)


def _item(profile: Profile, state: str = "ready", sha: str = "a" * 64, family: str = "sd1") -> CatalogItem:
    checkpoint = CheckpointId.of(sha, "model")
    entry = EngineEntry(id=f"e-{profile.slug()}-{state}", checkpoint=checkpoint, family=family, backend="tensorrt",
                        backend_version="10.3", gpu_arch="sm_89", profile=profile, precision="fp16",
                        file="e.trt", file_size=3 * 2**20)
    return CatalogItem(entry, EngineStatus(state, "" if state == "ready" else "built for sm_86"))


def test_which_engine_answers_from_the_profiles():
    small = _item(Profile(Range(1, 1, 2), Range(512, 512, 768), Range(512, 512, 768), Range(75, 75, 150)))
    big = _item(Profile.static(1, 1024, 1024))
    items = [small, big]
    assert f"engine {small.entry.id} serves it in one run" in which_engine(items, 512, 640, 2)
    split = which_engine(items, 512, 512, 4)  # 8 rows, the engine takes up to 4: two runs
    assert f"engine {small.entry.id} serves it in 2 runs of 4+4 rows" in split
    assert f"engine {big.entry.id}" in which_engine(items, 1024, 1024, 1)
    none = which_engine(items, 896, 896, 1)
    assert "no engine covers it, the built-in UNet will run" in none and "outside" in none
    assert "no engine covers it" in which_engine(items, 512, 512, 1, tokens=225)
    assert which_engine(items, 500, 512, 1).startswith("width must be a positive multiple of 8")
    assert "no engines for this checkpoint" in which_engine(items, 512, 512, 1, checkpoint_sha="b" * 64)
    stale = [_item(Profile.static(1, 512, 512), state="stale")]
    assert "no ready engine" in which_engine(stale, 512, 512, 1)


def test_engine_rows_show_ranges_and_status():
    row = engine_rows([_item(Profile(Range(1, 1, 4), Range(512, 512, 768), Range(512, 640, 768),
                                     Range(75, 75, 75)), state="stale")])[0]
    assert row[2:6] == ["512-768 (opt 640)", "512-768 (opt 512)", "1-4 (opt 1)", "75"]
    assert row[6] == "tensorrt 10.3" and row[9] == "3.0 MiB" and row[10] == "stale: built for sm_86"


def test_estimate_uses_earlier_builds_when_there_are_some(tmp_path: Path):
    workspace = Workspace(tmp_path)
    checkpoint = CheckpointId.of("c" * 64, "tiny")
    profile = Profile.static(1, 64, 64)
    guess = estimate(10_000_000, TINY, profile, "fp16", "onnxruntime", "cpu", workspace, checkpoint, [])
    assert guess.engine_bytes == 20_000_000 and guess.onnx_bytes == 20_000_000 and guess.memory_kind == "RAM"
    assert "rough guess" in guess.time_basis
    past = [_item(profile, family="tiny").entry for _ in range(3)]
    for entry, seconds in zip(past, (10, 30, 20)):
        entry.backend, entry.build_seconds = "onnxruntime", seconds
    measured = estimate(10_000_000, TINY, profile, "fp32", "onnxruntime", "cuda", workspace, checkpoint, past)
    assert measured.build_seconds == 20 and "median of 3" in measured.time_basis
    assert measured.engine_bytes == 40_000_000 and measured.memory_kind == "VRAM"
    onnx = workspace.onnx_folder(checkpoint, TINY, "fp32") / "unet.onnx"
    onnx.parent.mkdir(parents=True)
    onnx.write_bytes(b"x")
    assert estimate(10_000_000, TINY, profile, "fp32", "onnxruntime", "cpu", workspace, checkpoint, []).onnx_bytes == 0


def test_the_result_panel_says_when_an_engine_was_not_checked(tmp_path):
    from sd_unet_trt.trt_core.jobs import JobStatus
    from sd_unet_trt.ui.render import result_panel

    entry = EngineEntry(id="e", checkpoint=CheckpointId.of("ab" * 32, "tiny"), family="tiny", backend="tensorrt",
                        backend_version="tensorrt_rtx 1.7.1.116", gpu_arch="portable", profile=Profile.static(1, 64, 64),
                        precision="fp16", file="e.trt", file_size=1,
                        details={"unverified": "no GPU here", "notes": ["built without a GPU: not refittable"]})
    panel = result_panel(JobStatus("1", "t", "done", result=entry), Workspace(tmp_path))
    assert "not checked: no GPU here" in panel and "built without a GPU: not refittable" in panel
