"""The engine table, and which engine would serve a given generation."""
from __future__ import annotations

from typing import Sequence

from sd_unet_trt.models.families import UnsupportedModelError, family_named
from sd_unet_trt.trt_core.catalog import CatalogItem
from sd_unet_trt.trt_core.estimate import human_bytes
from sd_unet_trt.trt_core.profiles import (BATCH_LIMITS, CONTEXT_PER_CHUNK, LATENT_SCALE, PX_LIMITS, TOKEN_LIMITS,
                                           TOKENS_PER_CHUNK, CallShape, Range, shown)
from sd_unet_trt.trt_core.router import EngineRecord, Router

COLUMNS = ["Engine", "Checkpoint", "Width (px)", "Height (px)", "Batch", "Prompt tokens", "Backend",
           "Precision", "GPU", "Size", "Status"]


def _range(r: Range) -> str:
    return str(r.min) if r.min == r.max else f"{r.min}-{r.max} (opt {r.opt})"


def status_text(item: CatalogItem) -> str:
    return item.status.state + (f": {item.status.reason}" if item.status.reason else "")


def engine_rows(items: Sequence[CatalogItem]) -> list[list[str]]:
    rows = []
    for item in items:
        e = item.entry
        rows.append([e.id, f"{e.checkpoint.name} [{e.checkpoint.short_hash}] {e.family}",
                     _range(e.profile.width), _range(e.profile.height), _range(e.profile.batch),
                     _range(e.profile.tokens), f"{e.backend} {e.backend_version}", e.precision, e.gpu_arch,
                     human_bytes(e.file_size), status_text(item)])
    return rows


def _never_loaded():
    raise RuntimeError("the table only plans; it never loads engines")


def which_engine(items: Sequence[CatalogItem], width: int, height: int, batch: int, tokens: int = 75,
                 checkpoint_sha: str | None = None) -> str:
    """Which ready engine a generation of batch x width x height would run on, and how; or why none.

    The call is the WebUI's default one: cond and uncond rows together (2 x batch rows). A query
    outside what any engine can be built for is answered before planning: no plan is made (or
    text written) in proportion to a huge batch."""
    for name, value, step, (lo, hi), unit in (("width", width, LATENT_SCALE, PX_LIMITS, "px"),
                                              ("height", height, LATENT_SCALE, PX_LIMITS, "px"),
                                              ("batch", batch, 1, BATCH_LIMITS, "images"),
                                              ("tokens", tokens, TOKENS_PER_CHUNK, TOKEN_LIMITS, "tokens")):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0 or value % step:
            return f"{name} must be a positive multiple of {step}, got {shown(value)}"
        if not lo <= value <= hi:
            return f"{name} must lie within {lo}-{hi} {unit} (what an engine can cover), got {shown(value)}"
    candidates = [i for i in items if checkpoint_sha is None or i.entry.checkpoint.sha256 == checkpoint_sha]
    if not candidates:
        return "no engines for this checkpoint yet; the built-in UNet will run"
    ready = [i for i in candidates if i.status.ready]
    if not ready:
        return "no ready engine for this checkpoint (see the Status column); the built-in UNet will run"
    by_family: dict[str, list[EngineRecord]] = {}
    for item in ready:
        e = item.entry
        try:
            family = family_named(e.family)
        except UnsupportedModelError:
            continue
        by_family.setdefault(e.family, []).append(
            EngineRecord(e.id, family, e.profile, _never_loaded, label=e.id))
    answers = []
    for family_name, records in by_family.items():
        family = records[0].family
        call = CallShape(rows=2 * batch, channels=family.in_channels, latent_height=height // LATENT_SCALE,
                         latent_width=width // LATENT_SCALE, context_len=tokens // TOKENS_PER_CHUNK * CONTEXT_PER_CHUNK,
                         context_dim=family.context_dim, y_dim=family.y_dim)
        plan = Router(records).plan(call)
        what = f"{width}x{height} px, batch {batch} ({2 * batch} UNet rows), {tokens} tokens"
        if plan.covered:
            runs = "in one run" if len(plan.chunks) == 1 else f"in {len(plan.chunks)} runs of {'+'.join(map(str, plan.chunks))} rows"
            answers.append(f"{what}: engine {plan.record.id} serves it {runs}")
        else:
            answers.append(f"{what}: no engine covers it, the built-in UNet will run ({plan.reason})")
    return "\n".join(answers) if answers else "no ready engine of a known model family"
