"""Resolution profiles: what an engine covers, in the units users think in (pixels, tokens, images).

A profile maps to tensor shapes the way the WebUI calls the UNet (docs/DESIGN.md): latent = px / 8,
context = 77 per 75-token chunk, and rows = images x 2 (cond + uncond) at the top end. The lower
end keeps single rows, because some calls carry only cond rows (negative-guidance skips, prompts
whose cond and uncond differ in length, batch_cond_uncond off) and the router splits large batches.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Mapping

import torch

from sd_unet_trt.errors import UserError
from sd_unet_trt.models.families import ModelFamily

TOKENS_PER_CHUNK = 75
CONTEXT_PER_CHUNK = 77
LATENT_SCALE = 8
PX_LIMITS = (64, 4096)
TOKEN_LIMITS = (75, 750)
BATCH_LIMITS = (1, 32)
DIMENSION_NAMES = ("batch", "height", "width", "tokens")
RANGE_KEYS = ("min", "opt", "max")


def whole_number(value: Any) -> int | None:
    """A whole number from what a form or a JSON request sends (int, integral float, numeric
    text), else None: no bool, no fraction, no NaN or infinity."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return int(number) if number.is_integer() else None


def shown(value: Any, limit: int = 100) -> str:
    """A value a request sent, for a message: short whatever was sent (hundreds of digits, a
    megabyte of text, something nested deep), so that answers stay one readable line."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**12:
        return f"{value:.2e}" if abs(value) < 1e300 else ("a number over 1e300" if value > 0 else "a number below -1e300")
    if value is None or isinstance(value, (bool, int, float)):
        return str(value)
    if isinstance(value, str):
        text = value[:limit] if value[:limit].isprintable() else repr(value[:limit])  # no line breaks
        return text if len(value) <= limit else f"{text}... ({len(value)} characters)"
    return f"a {type(value).__name__}"


class ProfileError(UserError, ValueError):
    """A profile that cannot be built; `problems` maps a field to its message."""

    def __init__(self, problems: dict[str, str]):
        self.problems = problems
        super().__init__("; ".join(f"{field}: {msg}" for field, msg in problems.items()))


@dataclass(frozen=True)
class Range:
    min: int
    opt: int
    max: int

    def __contains__(self, value: int) -> bool:
        return self.min <= value <= self.max

    def __str__(self) -> str:
        return str(self.min) if self.min == self.max else f"{self.min}-{self.max}"


@dataclass(frozen=True)
class CallShape:
    """The shapes of one UNet call, read off its tensors."""
    rows: int
    channels: int
    latent_height: int
    latent_width: int
    context_len: int
    context_dim: int
    y_dim: int | None
    control: tuple[tuple[int, ...], ...] | None = None  # shapes of the control inputs, when given

    @classmethod
    def of(cls, x: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None,
           control: "list[torch.Tensor] | None" = None) -> "CallShape":
        return cls(rows=x.shape[0], channels=x.shape[1], latent_height=x.shape[2], latent_width=x.shape[3],
                   context_len=context.shape[1], context_dim=context.shape[2],
                   y_dim=None if y is None else y.shape[1],
                   control=None if control is None else tuple(tuple(c.shape) for c in control))

    def describe(self) -> str:
        return (f"{self.latent_width * LATENT_SCALE}x{self.latent_height * LATENT_SCALE} px, {self.rows} rows, "
                f"{self.context_len // CONTEXT_PER_CHUNK * TOKENS_PER_CHUNK} tokens")


@dataclass(frozen=True)
class Coverage:
    covered: bool
    reason: str = ""
    needs_split: bool = False

    def __bool__(self) -> bool:
        return self.covered


@dataclass(frozen=True)
class Profile:
    batch: Range  # images per generation batch
    height: Range  # pixels
    width: Range  # pixels
    tokens: Range  # prompt tokens

    @classmethod
    def static(cls, batch: int, height: int, width: int, tokens: int = 75) -> "Profile":
        return cls(Range(batch, batch, batch), Range(height, height, height), Range(width, width, width),
                   Range(tokens, tokens, tokens))

    def problems(self) -> dict[str, str]:
        """Every rule this profile breaks, by field; empty when it is valid."""
        out: dict[str, str] = {}
        for field, rng, (lo, hi), step, unit in [
            ("batch", self.batch, BATCH_LIMITS, 1, "images"),
            ("height", self.height, PX_LIMITS, LATENT_SCALE, "px"),
            ("width", self.width, PX_LIMITS, LATENT_SCALE, "px"),
            ("tokens", self.tokens, TOKEN_LIMITS, TOKENS_PER_CHUNK, "tokens"),
        ]:
            values = (rng.min, rng.opt, rng.max)
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                out[field] = "min, opt and max must be whole numbers"
                continue
            got = " / ".join(map(shown, values))
            if not rng.min <= rng.opt <= rng.max:
                out[field] = f"needs min <= opt <= max, got {got}"
            elif any(v % step for v in values):
                out[field] = f"must be multiples of {step} {unit}, got {got}"
            elif rng.min < lo or rng.max > hi:
                out[field] = f"must lie within {lo}-{hi} {unit}, got {got}"
        return out

    def validate(self) -> "Profile":
        problems = self.problems()
        if problems:
            raise ProfileError(problems)
        return self

    # Derived once per profile (the fields are frozen): the router reads these for every UNet call,
    # and making a frozen Range costs about a microsecond each time.
    @cached_property
    def rows(self) -> Range:
        return Range(self.batch.min, 2 * self.batch.opt, 2 * self.batch.max)

    @cached_property
    def context_len(self) -> Range:
        return Range(*(t // TOKENS_PER_CHUNK * CONTEXT_PER_CHUNK for t in (self.tokens.min, self.tokens.opt, self.tokens.max)))

    @cached_property
    def latent_height(self) -> Range:
        return self.latent(self.height)

    @cached_property
    def latent_width(self) -> Range:
        return self.latent(self.width)

    def latent(self, px: Range) -> Range:
        return Range(px.min // LATENT_SCALE, px.opt // LATENT_SCALE, px.max // LATENT_SCALE)

    def input_shapes(self, family: ModelFamily) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """min / opt / max shape of every dynamic input, as a builder's optimization profile wants them."""
        r, h, w, c = self.rows, self.latent(self.height), self.latent(self.width), self.context_len
        pick = [lambda g: g.min, lambda g: g.opt, lambda g: g.max]
        shapes = {
            "x": tuple((p(r), family.in_channels, p(h), p(w)) for p in pick),
            "timesteps": tuple((p(r),) for p in pick),
            "context": tuple((p(r), p(c), family.context_dim) for p in pick),
        }
        if family.y_dim:
            shapes["y"] = tuple((p(r), family.y_dim) for p in pick)
        for i, name in enumerate(family.control_names):
            shapes[name] = tuple(family.control_shapes(p(r), p(h), p(w))[i] for p in pick)
        return shapes

    def covers(self, call: CallShape, family: ModelFamily) -> Coverage:
        """Whether an engine of this profile can serve the call (maybe in several row chunks)."""
        if call.channels != family.in_channels:
            return Coverage(False, f"{call.channels} input channels, the engine takes {family.in_channels}")
        if call.context_dim != family.context_dim or call.y_dim != family.y_dim:
            return Coverage(False, f"context width {call.context_dim} / y {call.y_dim}, the engine is for "
                                   f"{family.label} ({family.context_dim} / {family.y_dim})")
        if call.control is not None:
            if not family.controlnet:
                return Coverage(False, "ControlNet is active and the engine has no ControlNet inputs")
            expected = tuple(shape[1:] for shape in family.control_shapes(call.rows, call.latent_height, call.latent_width))
            if tuple(shape[1:] for shape in call.control) != expected or any(s[0] != call.rows for s in call.control):
                if len(expected) == 1 and len(call.control) == 1:  # one control input: a ControlNet's control image
                    return Coverage(False, f"{family.control_label} is {list(call.control[0][1:])}, the engine takes "
                                           f"{list(expected[0])} at this latent size")
                return Coverage(False, f"{family.control_label} are not shaped as the engine's inputs "
                                       f"({len(call.control)} tensors, {len(expected)} expected)")
        h_px, w_px = call.latent_height * LATENT_SCALE, call.latent_width * LATENT_SCALE
        if h_px not in self.height or w_px not in self.width:
            return Coverage(False, f"{w_px}x{h_px} px is outside {self.width}x{self.height} px")
        if call.context_len % CONTEXT_PER_CHUNK or call.context_len not in self.context_len:
            tokens = call.context_len // CONTEXT_PER_CHUNK * TOKENS_PER_CHUNK
            return Coverage(False, f"{tokens} prompt tokens is outside {self.tokens} tokens")
        if call.rows < self.rows.min:
            return Coverage(False, f"{call.rows} rows is below the engine's minimum of {self.rows.min}")
        return Coverage(True, needs_split=call.rows > self.rows.max)

    def label(self) -> str:
        return f"{self.width}x{self.height} px, batch {self.batch}, {self.tokens} tokens"

    def slug(self) -> str:
        """A file-name-safe id, distinct for distinct profiles."""
        return "_".join(f"{name[0]}{r.min}-{r.opt}-{r.max}" for name, r in
                        [("batch", self.batch), ("height", self.height), ("width", self.width), ("tokens", self.tokens)])

    def to_dict(self) -> dict[str, dict[str, int]]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> "Profile":
        """The profile a manifest or a request holds. Whatever else it holds (wrong types, missing
        keys, fractions, text) is a ProfileError naming the field; the message never repeats the
        input, which may be huge or nested deep."""
        if not isinstance(data, Mapping):
            raise ProfileError({"profile": f"malformed profile: expected an object with {', '.join(DIMENSION_NAMES)}, "
                                           f"got {shown(data)}"})
        ranges, problems = {}, {}
        for field in DIMENSION_NAMES:
            rng = data.get(field)
            if not isinstance(rng, Mapping) or any(key not in rng for key in RANGE_KEYS):
                problems[field] = "malformed profile: expected an object with min, opt and max"
                continue
            values = [whole_number(rng[key]) for key in RANGE_KEYS]
            if None in values:
                problems[field] = "min, opt and max must be whole numbers, got " + " / ".join(
                    shown(rng[key]) for key in RANGE_KEYS)
            else:
                ranges[field] = Range(*values)
        if problems:
            raise ProfileError(problems)
        return cls(**ranges)


@dataclass(frozen=True)
class Preset:
    name: str
    profile: Profile


def _dynamic(batch: tuple[int, int, int], px: tuple[int, int, int], tokens: tuple[int, int, int]) -> Profile:
    return Profile(Range(*batch), Range(*px), Range(*px), Range(*tokens))


def presets_for(family: ModelFamily) -> list[Preset]:
    """Presets that suit the family; the one-click default comes first."""
    n = family.native_px
    if family.name.startswith("tiny"):
        return [Preset("Default: 64-128 px, batch 1-2", _dynamic((1, 1, 2), (64, 64, 128), (75, 75, 150))),
                Preset("Static 64x64, batch 1", Profile.static(1, 64, 64))]
    small, large = (n * 3 // 4) // 64 * 64, min(2 * n, PX_LIMITS[1])
    return [
        Preset(f"Default: {small}-{n + n // 2} px, batch 1-4, up to 150 tokens",
               _dynamic((1, 1, 4), (small, n, n + n // 2), (75, 75, 150))),
        Preset(f"Static {n}x{n}, batch 1", Profile.static(1, n, n)),
        Preset(f"Hires fix second pass: {n + n // 2}-{large} px, batch 1-2",
               _dynamic((1, 1, 2), (n + n // 2, large, large), (75, 75, 150))),
        Preset(f"Wide range: {n // 2}-{large} px, batch 1-4, up to 225 tokens",
               _dynamic((1, 1, 4), (n // 2, n, large), (75, 75, 225))),
    ]
