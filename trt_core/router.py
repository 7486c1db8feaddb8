"""Per-call routing: pick the loaded-or-loadable engine that covers a call's shapes, split a batch
that is too large into chunks that fit, or answer "not covered" with the reason so the caller
falls back. It never raises for a call it cannot serve; an engine that fails is set aside.

`set_weights` tells the router which UNet weights differ from the ones its engines were built
with (a LoRA): every loaded engine takes them at once, every engine loaded later on loading, and
an engine that cannot is not used until the weights change again (its reason is in the plan).

Callers may share one router across threads (API callers, the tab, library users). An engine
stays open while a call runs on it: unload, eviction and close take it out of use at once and
close it when its last running call ends; unload and close return only then. Engines load one at a
time, outside the router's lock: planning and calls on loaded engines go on meanwhile."""
from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.backends.base import Engine, EngineUnavailable, WeightsUnsupported
from sd_unet_trt.trt_core.profiles import CallShape, Profile

log = logging.getLogger(__name__)
# Runs of one engine per call: twice what batch 32 (64 rows) needs on the smallest engine (2 rows);
# a call beyond it is no real generation and would only make a list that eats memory and time.
MAX_CHUNKS = 64


@dataclass
class EngineRecord:
    """A candidate engine, known by its profile before it is loaded."""
    id: str
    family: ModelFamily
    profile: Profile
    load: Callable[[], Engine]
    label: str = ""
    weights: str = ""  # digest of the weights it was built with (trt_core.weights)
    preferred: bool = False  # chosen before the others that cover a call as well, loaded or not (a server)

    def __post_init__(self) -> None:
        self.label = self.label or self.id


@dataclass
class Plan:
    record: EngineRecord | None
    chunks: list[int] = field(default_factory=list)  # rows per engine run
    reason: str = ""
    unfit: str = ""  # engines would cover the call's shapes but cannot take the changed weights: why

    @property
    def covered(self) -> bool:
        return self.record is not None


@dataclass
class RouteResult:
    output: torch.Tensor | None
    engine: str | None = None
    reason: str = ""
    chunks: int = 0
    unfit: str = ""  # see Plan.unfit
    passed_over: tuple[str, ...] = ()  # labels of engines that could not take the call (a server down)

    @property
    def covered(self) -> bool:
        return self.output is not None


def split_rows(rows: int, max_rows: int) -> list[int]:
    """Fewest chunks of at most max_rows, as even as possible (so each stays above the minimum)."""
    n = math.ceil(rows / max_rows)
    base, extra = divmod(rows, n)
    return [base + 1] * extra + [base] * (n - extra)


def _distance(call: CallShape, profile: Profile) -> int:
    """How far the call is from the profile's opt shape (engines are fastest near opt)."""
    h, w = profile.latent_height, profile.latent_width
    return (abs(call.rows - profile.rows.opt) + abs(call.latent_height - h.opt) + abs(call.latent_width - w.opt)
            + abs(call.context_len - profile.context_len.opt))


class Router:
    def __init__(self, records: Sequence[EngineRecord], memory_budget_bytes: int | None = None):
        self.records = list(records)
        self.memory_budget_bytes = memory_budget_bytes
        self.failed: dict[str, str] = {}  # engine id -> why it was set aside
        self.unfit: dict[str, str] = {}  # engine id -> why it cannot take the current weights
        self._weights: dict[str, torch.Tensor] = {}
        self._at_build = True  # _weights are the ones the engines were built with
        self._given: set[str] = set()  # weights some engine was given values for since it loaded
        self._loaded: OrderedDict[str, Engine] = OrderedDict()
        self._running: dict[int, int] = {}  # id(engine) -> calls running on it
        self._retired: dict[int, Engine] = {}  # out of use, closed when its last running call ends
        self._lock = threading.RLock()  # guards all of the above; engines run without it
        self._closed = threading.Condition(self._lock)  # notified when a retired engine is closed
        # Loads take turns (one engine's memory at a time, never the same engine twice) without the
        # lock above. Taken before it, never while holding it.
        self._load_lock = threading.Lock()

    @classmethod
    def from_engines(cls, engines: Sequence[Engine], memory_budget_bytes: int | None = None) -> "Router":
        router = cls([EngineRecord(e.name, e.family, e.profile, lambda e=e: e) for e in engines], memory_budget_bytes)
        for engine in engines:
            router._loaded[engine.name] = engine
        return router

    @property
    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    @property
    def loaded_bytes(self) -> int:
        """Device memory the loaded engines hold: each one's own, and each buffer they share once, at
        the largest need among them (Engine.shared_memory)."""
        with self._lock:
            shared: dict[object, int] = {}
            for engine in self._loaded.values():
                if engine.shared_memory is not None:
                    key, nbytes = engine.shared_memory
                    shared[key] = max(shared.get(key, 0), nbytes)
            return sum(engine.memory_bytes for engine in self._loaded.values()) + sum(shared.values())

    def plan(self, call: CallShape, unavailable: Mapping[str, str] | None = None) -> Plan:
        """`unavailable`: engines that could not take this call (by id, why), not asked again."""
        with self._lock:
            candidates, reasons, unfit = [], [], []
            for record in self.records:
                if record.id in self.failed:
                    reasons.append(f"{record.label}: set aside ({self.failed[record.id]})")
                    continue
                if unavailable and record.id in unavailable:
                    reasons.append(unavailable[record.id])
                    continue
                coverage = record.profile.covers(call, record.family)
                if not coverage:
                    reasons.append(f"{record.label}: {coverage.reason}")
                    continue
                if record.id in self.unfit:
                    reasons.append(f"{record.label}: cannot take the changed weights ({self.unfit[record.id]})")
                    unfit.append(self.unfit[record.id])
                    continue
                if call.rows > MAX_CHUNKS * record.profile.rows.max:
                    reasons.append(f"{record.label}: {call.rows} rows would need more than {MAX_CHUNKS} runs "
                                   f"of at most {record.profile.rows.max} rows")
                    continue
                chunks = split_rows(call.rows, record.profile.rows.max) if coverage.needs_split else [call.rows]
                if min(chunks) < record.profile.rows.min:
                    reasons.append(f"{record.label}: {call.rows} rows cannot be split into chunks of "
                                   f"{record.profile.rows.min}-{record.profile.rows.max}")
                    continue
                # a plain call prefers a plain engine: ControlNet inputs fed zeros still cost their copies
                unused_inputs = call.control is None and record.family.controlnet
                key = (coverage.needs_split, unused_inputs, not record.preferred, record.id not in self._loaded,
                       _distance(call, record.profile))
                candidates.append((key, record, chunks))
            if not candidates:
                detail = "; ".join(reasons) if reasons else "no engines"
                return Plan(None, reason=f"no engine covers {call.describe()} ({detail})",
                            unfit=unfit[0] if unfit else "")
            _, record, chunks = min(candidates, key=lambda c: c[0])
            return Plan(record, chunks)

    def set_weights(self, weights: Mapping[str, torch.Tensor], at_build: bool = False) -> dict[str, str]:
        """From now on engines run with these values for the weights they name. Returns the engines
        that cannot, and why. `at_build`: the values are the ones the engines were built with (a
        LoRA switched off): an engine that cannot take weights never changed its own, so it fits."""
        with self._lock:
            self._weights, self._at_build = dict(weights), at_build
            self._given |= set(weights)
            self.unfit = {}
            for engine_id, engine in self._loaded.items():
                self._give_weights(engine_id, engine)
            return dict(self.unfit)

    def build_weights(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The values the engines were built with, for those of these weights that a loaded engine can
        read and no engine was given others for (views on the engine's device: copy before use)."""
        with self._lock:
            wanted = [name for name in names if name not in self._given]
            out: dict[str, torch.Tensor] = {}
            for engine in self._loaded.values():
                missing = [name for name in wanted if name not in out]
                if not missing:
                    break
                out.update(engine.weights_of(missing))
            return out

    def _give_weights(self, engine_id: str, engine: Engine) -> bool:
        if not self._weights:
            return True
        try:
            engine.set_weights(self._weights)
        except WeightsUnsupported as e:
            if self._at_build:
                return True
            self.unfit[engine_id] = str(e)
            return False
        return True

    def replace_records(self, records: Sequence[EngineRecord]) -> None:
        """Route between these engines from now on (e.g. a server's, back after it did not answer);
        a loaded engine no longer among them is unloaded."""
        with self._lock:
            self.records = list(records)
            kept = {record.id for record in self.records}
            for engine_id in [i for i in self._loaded if i not in kept]:
                self._take_out(engine_id)

    def _checkout(self, record: EngineRecord) -> Engine | None:
        """The record's engine, loaded if need be and kept open until `_release`; None when it was set
        aside, cannot take the current weights or is no longer routed to (another thread's doing
        since the plan)."""
        settled, engine = self._checkout_loaded(record)
        if settled:
            return engine
        with self._load_lock:
            settled, engine = self._checkout_loaded(record)  # another thread may have loaded it meanwhile
            if settled:
                return engine
            engine = record.load()
            with self._lock:
                if record.id in self.failed or not self._routes_to(record):  # decided during the load
                    engine.close()
                    return None
                self._loaded[record.id] = engine
                self._evict(keep=record.id)
                if not self._give_weights(record.id, engine):
                    return None
                return self._checkout_loaded(record)[1]

    def _checkout_loaded(self, record: EngineRecord) -> tuple[bool, Engine | None]:
        """(False, None) when the record's engine must be loaded first; else (True, the engine checked
        out, or None when it must not be used now)."""
        with self._lock:
            if record.id in self.failed or record.id in self.unfit or not self._routes_to(record):
                return True, None
            engine = self._loaded.get(record.id)
            if engine is None:
                return False, None
            self._loaded.move_to_end(record.id)
            self._running[id(engine)] = self._running.get(id(engine), 0) + 1
            return True, engine

    def _routes_to(self, record: EngineRecord) -> bool:
        return any(r.id == record.id for r in self.records)

    def _release(self, engine: Engine) -> None:
        with self._lock:
            key = id(engine)
            self._running[key] -= 1
            if self._running[key]:
                return
            del self._running[key]
            retired = self._retired.pop(key, None)
            if retired is not None:
                retired.close()
                self._closed.notify_all()

    def _take_out(self, engine_id: str) -> Engine | None:
        """No new call gets the engine; it is closed now, or by its last running call. Under the lock."""
        engine = self._loaded.pop(engine_id, None)
        if engine is None:
            return None
        if id(engine) in self._running:
            self._retired[id(engine)] = engine
        else:
            engine.close()
        return engine

    def _evict(self, keep: str) -> None:
        if self.memory_budget_bytes is None:
            return
        while self.loaded_bytes > self.memory_budget_bytes:
            victim = next((i for i in self._loaded if i != keep), None)
            if victim is None:
                return
            log.info("unloading engine %s to stay within the memory budget", victim)
            self._take_out(victim)

    def run(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
            y: torch.Tensor | None = None, control: Sequence[torch.Tensor] | None = None) -> RouteResult:
        """The engine's output for this call, or no output and the reason (the caller falls back).
        `control`: ControlNet's residuals and T2I-Adapter's features (models.unet.UNetConfig.
        control_shapes); only engines with control inputs serve such a call."""
        control = None if control is None else list(control)
        call = CallShape.of(x, context, y, control)
        unavailable: dict[str, str] = {}
        while True:
            plan = self.plan(call, unavailable)
            if not plan.covered:
                return RouteResult(None, reason=plan.reason, unfit=plan.unfit)
            record = plan.record
            try:
                engine = self._checkout(record)
                if engine is None:
                    continue  # now in `failed` or `unfit`: plan again without it
                try:
                    output = self._run_chunks(engine, plan.chunks, x, timesteps, context, y, control)
                finally:
                    self._release(engine)
            except EngineUnavailable as e:  # e.g. a server that is down: another engine, for this call only
                unavailable[record.id] = f"{record.label}: {e}"
                continue
            except Exception as e:  # one bad engine must not take the generation down
                if isinstance(e, ValueError):  # a file that is not the one built, or for another engine: one line
                    log.warning("engine %s set aside for this session: %s", record.label, e)
                else:
                    log.exception("engine %s failed; it is set aside for this session", record.label)
                with self._lock:
                    self.failed[record.id] = f"{type(e).__name__}: {e}"
                    self._take_out(record.id)
                continue
            return RouteResult(output, record.label, chunks=len(plan.chunks),
                               passed_over=tuple(r.label for r in self.records if r.id in unavailable)
                               if unavailable else ())

    @staticmethod
    def _run_chunks(engine: Engine, chunks: list[int], x, timesteps, context, y, control) -> torch.Tensor:
        if timesteps.dim() == 0 or timesteps.shape[0] != x.shape[0]:
            timesteps = timesteps.reshape(-1).expand(x.shape[0])
        extra = {} if control is None else {"control": control}  # plain engines keep their signature
        if len(chunks) == 1:
            return engine(x, timesteps, context, y, **extra)
        outputs, start = [], 0
        for rows in chunks:
            part = slice(start, start + rows)
            if control is not None:
                extra = {"control": [c[part] for c in control]}
            outputs.append(engine(x[part], timesteps[part], context[part], None if y is None else y[part], **extra))
            start += rows
        if isinstance(outputs[0], list):  # a ControlNet's residuals: each joined over the chunks
            return [torch.cat(parts) for parts in zip(*outputs)]
        return torch.cat(outputs)

    def unload(self, engine_id: str) -> None:
        """Unload the engine; returns once it is closed (after the load in progress and the calls
        running on it end)."""
        with self._load_lock, self._lock:
            self._await_closed([self._take_out(engine_id)])

    def close(self) -> None:
        """Unload every engine; returns once all are closed (a load in progress too), those retired
        earlier too."""
        with self._load_lock, self._lock:
            for engine_id in list(self._loaded):
                self._take_out(engine_id)
            self._await_closed(list(self._retired.values()))

    def _await_closed(self, engines: list[Engine | None]) -> None:
        # holding the engines keeps their ids from being reused while we wait (which frees the lock)
        self._closed.wait_for(lambda: not any(id(e) in self._retired for e in engines if e is not None))
