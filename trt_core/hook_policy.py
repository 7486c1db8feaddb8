"""What the WebUI's UNet hook decides, kept free of the WebUI so it runs and is tested anywhere.

- `engines_router`: a router over one checkpoint's ready engines, the preferred backend first;
  `checkpoint_records`: a Triton server's engines put ahead of them.
- `suggestion`: the profile that would cover a call the engines missed.
- `expected_calls` / `uncovered_calls`: the calls a generation will make (docs/DESIGN.md's call
  table), checked against the engines before sampling starts.
- `fallback_residency`: whether the built-in UNet may stay on the GPU after a fallback call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.catalog import CatalogItem, router_for_checkpoint
from sd_unet_trt.trt_core.manifest import INDEX_NAME
from sd_unet_trt.trt_core.profiles import CONTEXT_PER_CHUNK, LATENT_SCALE, TOKENS_PER_CHUNK, CallShape
from sd_unet_trt.trt_core.router import EngineRecord, Router
from sd_unet_trt.trt_core.workspace import Workspace

INFOTEXT_KEY = "TensorRT"
AUTOMATIC = "Automatic"


def manifest_signature(workspace: Workspace) -> tuple[int, int] | None:
    """Changes whenever the manifest is rewritten (an engine built or deleted)."""
    try:
        stat = (workspace.engine_dir / INDEX_NAME).stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def engines_router(workspace: Workspace, sha256: str, device: str, memory_budget_bytes: int | None = None,
                   preferred_backend: str = AUTOMATIC, cuda_graphs: bool = False) -> tuple[Router, list[CatalogItem]]:
    """The checkpoint's router with the WebUI's settings: preferred backend first, CUDA graphs
    on or off for the backends that have them, engines of one weights digest (checkpoint_records)."""
    router, left_out = router_for_checkpoint(workspace, sha256, device, memory_budget_bytes,
                                             None if preferred_backend == AUTOMATIC else preferred_backend,
                                             {"cuda_graphs": cuda_graphs})
    router.replace_records(checkpoint_records(router.records, [])[0])
    return router, left_out


def checkpoint_records(local: Sequence[EngineRecord], served: Sequence[EngineRecord]) -> tuple[list[EngineRecord], str]:
    """One checkpoint's engines as the hook routes between them: a Triton server's first (the user
    asked for the server), then the local ones, all of one weights digest (one checkpoint file has
    one: the first local engine's, else the server's). Also why the server's engines are left out
    ("" when they are not)."""
    problem = ""
    if local:
        fitting = [r for r in served if r.weights == local[0].weights]
        if served and not fitting:
            problem = "the Triton server's engines hold other weights than the local engines; local engines serve"
        served = fitting
    records = [*served, *local]
    return [r for r in records if r.weights == records[0].weights], problem


def short_reason(call: CallShape) -> str:
    return f"no engine covers {call.describe()}"


def suggestion(call: CallShape) -> str:
    """The profile a user would build so that this call is covered."""
    width, height = call.latent_width * LATENT_SCALE, call.latent_height * LATENT_SCALE
    tokens = math.ceil(call.context_len / CONTEXT_PER_CHUNK) * TOKENS_PER_CHUNK
    images = max(1, math.ceil(call.rows / 2))
    return (f"an engine whose profile includes {width}x{height} px, batch {images} "
            f"(max batch >= {images}, min batch 1) and {tokens} tokens")


def chunks_for(tokens: int) -> int:
    return max(1, math.ceil(tokens / TOKENS_PER_CHUNK))


@dataclass(frozen=True)
class ExpectedCall:
    shape: CallShape
    what: str  # which part of the generation makes it, for the warning


@dataclass(frozen=True)
class GenerationPlan:
    """What a generation asks of the UNet (the WebUI's processing object, reduced)."""
    width: int
    height: int
    batch: int
    cond_tokens: int  # the longest (sub-)prompt's token count
    uncond_tokens: int
    subprompts: int = 1  # AND-separated parts of the prompt
    pad_cond_uncond: bool = False
    batch_cond_uncond: bool = True
    hires: tuple[int, int] | None = None  # second pass (width, height)


def expected_calls(plan: GenerationPlan, family: ModelFamily) -> list[ExpectedCall]:
    """The UNet calls of one sampling step (both passes with hires fix), per docs/DESIGN.md's table."""
    cond_rows, uncond_rows = plan.batch * plan.subprompts, plan.batch
    cond_ctx = chunks_for(plan.cond_tokens) * CONTEXT_PER_CHUNK
    uncond_ctx = chunks_for(plan.uncond_tokens) * CONTEXT_PER_CHUNK
    if plan.pad_cond_uncond:
        cond_ctx = uncond_ctx = max(cond_ctx, uncond_ctx)
    if not plan.batch_cond_uncond:
        groups = [(plan.batch, cond_ctx, "cond rows"), (plan.batch, uncond_ctx, "uncond rows")]
    elif cond_ctx == uncond_ctx:
        groups = [(cond_rows + uncond_rows, cond_ctx, "cond + uncond rows")]
    else:
        groups = [(cond_rows, cond_ctx, "cond rows"), (uncond_rows, uncond_ctx, "uncond rows")]
    passes = [("", plan.width, plan.height)]
    if plan.hires:
        passes.append(("hires pass, ", *plan.hires))
    calls = []
    for label, width, height in passes:
        for rows, ctx, what in groups:
            shape = CallShape(rows, family.in_channels, height // LATENT_SCALE, width // LATENT_SCALE, ctx,
                              family.context_dim, family.y_dim)
            calls.append(ExpectedCall(shape, f"{label}{what}"))
    return calls


def uncovered_calls(router: Router, calls: list[ExpectedCall]) -> list[tuple[ExpectedCall, str]]:
    """The expected calls no engine covers, each with the router's reason."""
    out = []
    for call in calls:
        plan = router.plan(call.shape)
        if not plan.covered:
            out.append((call, plan.reason))
    return out


def precheck_message(uncovered: list[tuple[ExpectedCall, str]]) -> str:
    lines = [f"{call.what}: {call.shape.describe()} -> built-in UNet; {suggestion(call.shape)} would cover it"
             for call, _ in uncovered]
    return "TensorRT: not covered by an engine, these calls will run on the built-in UNet: " + "; ".join(lines)



KEEP, EVICT_THEN_KEEP, PER_CALL = "keep", "evict engines, then keep", "per call"


def fallback_residency(unet_bytes: int, engine_bytes: int, budget_bytes: int | None) -> str:
    """Whether the built-in UNet can stay on the GPU for the rest of the generation after a
    fallback call (no thrashing), only after unloading engines, or must leave after each call."""
    if budget_bytes is None or unet_bytes + engine_bytes <= budget_bytes:
        return KEEP
    if unet_bytes <= budget_bytes:
        return EVICT_THEN_KEEP
    return PER_CALL

