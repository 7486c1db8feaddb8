import pytest
import torch

from sd_unet_trt.models.families import FAMILIES, family_named
from sd_unet_trt.trt_core.profiles import CallShape, Profile, ProfileError, Range, presets_for

TINY = family_named("tiny")
SDXL = family_named("sdxl")


def call(rows=2, h=8, w=8, ctx=77, family=TINY, channels=None):
    x = torch.empty(rows, channels or family.in_channels, h, w, device="meta")
    c = torch.empty(rows, ctx, family.context_dim, device="meta")
    y = torch.empty(rows, family.y_dim, device="meta") if family.y_dim else None
    return CallShape.of(x, c, y)


def test_every_family_has_valid_presets_with_the_default_first():
    for family in FAMILIES.values():
        presets = presets_for(family)
        assert presets[0].name.startswith("Default")
        for preset in presets:
            preset.profile.validate()
            assert preset.profile.height.min <= family.native_px <= preset.profile.height.max or "Hires" in preset.name


@pytest.mark.parametrize("profile, field, words", [
    (Profile(Range(2, 1, 4), Range(512, 512, 512), Range(512, 512, 512), Range(75, 75, 75)), "batch", "min <= opt <= max"),
    (Profile(Range(1, 1, 1), Range(500, 512, 512), Range(512, 512, 512), Range(75, 75, 75)), "height", "multiples of 8"),
    (Profile(Range(1, 1, 1), Range(512, 512, 512), Range(32, 64, 64), Range(75, 75, 75)), "width", "within 64-4096"),
    (Profile(Range(1, 1, 1), Range(512, 512, 512), Range(512, 512, 512), Range(75, 100, 150)), "tokens", "multiples of 75"),
    (Profile(Range(1, 1, 64), Range(512, 512, 512), Range(512, 512, 512), Range(75, 75, 75)), "batch", "within 1-32"),
    (Profile(Range(1, 1, 1), Range(512, 512, 512), Range(512, 512, 512), Range(75, 75, 825)), "tokens", "within 75-750"),
])
def test_validation_names_the_field_and_the_rule(profile, field, words):
    with pytest.raises(ProfileError) as err:
        profile.validate()
    assert set(err.value.problems) == {field}
    assert words in err.value.problems[field]


def test_several_problems_are_reported_together():
    bad = Profile(Range(3, 2, 1), Range(63, 64, 64), Range(64, 64, 64), Range(1, 75, 75))
    assert set(bad.problems()) == {"batch", "height", "tokens"}


def test_shapes_follow_the_webui_call_pattern():
    p = Profile(Range(1, 1, 4), Range(512, 512, 768), Range(512, 640, 768), Range(75, 75, 150))
    shapes = p.input_shapes(SDXL)
    # rows: single cond rows at the bottom, 2 x images (cond + uncond) at opt and max
    assert shapes["x"] == ((1, 4, 64, 64), (2, 4, 64, 80), (8, 4, 96, 96))
    assert shapes["context"] == ((1, 77, 2048), (2, 77, 2048), (8, 154, 2048))
    assert shapes["y"] == ((1, 2816), (2, 2816), (8, 2816))
    assert shapes["timesteps"] == ((1,), (2,), (8,))
    assert "y" not in p.input_shapes(TINY)


def test_coverage_reasons():
    p = Profile(Range(1, 1, 2), Range(64, 64, 128), Range(64, 64, 128), Range(75, 75, 150))
    assert p.covers(call(), TINY)
    assert p.covers(call(rows=1, h=9, w=8, ctx=154), TINY)  # 72x64 px, cond rows only, 150 tokens
    assert p.covers(call(rows=6), TINY).needs_split
    assert "outside 64-128x64-128 px" in p.covers(call(h=32), TINY).reason
    assert "225 prompt tokens" in p.covers(call(ctx=231), TINY).reason
    assert "9 input channels" in p.covers(call(channels=9), TINY).reason
    assert "context width 2048" in p.covers(call(family=family_named("tiny-xl")), TINY).reason


def test_round_trip_and_malformed_dicts():
    p = presets_for(SDXL)[0].profile
    assert Profile.from_dict(p.to_dict()) == p
    with pytest.raises(ProfileError, match="malformed profile"):
        Profile.from_dict({"batch": {"min": 1}})
