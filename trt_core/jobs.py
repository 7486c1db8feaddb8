"""Build jobs: one build at a time in a background thread, watched and cancelled by job id.

The Gradio tab and the WebUI's API routes share the process-wide runner behind the module
functions (`start`, `status`, `cancel`, `current`, `latest`), so a build started from either
is seen and refused by both. A second build while one runs is refused with a message, never
queued: a queued multi-minute build the user cannot see is worse than a clear "busy".

    started = jobs.start("SD 1.x 512-768 px", lambda progress, cancel: build_engine(..., progress=progress, cancel=cancel))
    if not started.ok: show(started.refused)
    jobs.status(started.job_id)  # JobStatus: state, phase, fraction, result, error
    jobs.cancel(started.job_id)  # the work sees it through its CancelToken

Failures become a one-line `error` for the user; the traceback goes to the log.
"""
from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from sd_unet_trt.errors import UserError
from sd_unet_trt.trt_core.atomic import disk_full
from sd_unet_trt.trt_core.progress import BuildCancelled, CancelToken, ProgressFn

log = logging.getLogger(__name__)

# work(progress, cancel) -> result; it must poll `cancel` and raise BuildCancelled when set.
Work = Callable[[ProgressFn, CancelToken], Any]

RUNNING, DONE, FAILED, CANCELLED = "running", "done", "failed", "cancelled"
HISTORY = 20  # finished jobs kept for status queries


@dataclass(frozen=True)
class JobStatus:
    id: str
    title: str
    state: str  # running, done, failed, cancelled
    phase: str = "starting"
    fraction: float = 0.0  # of the whole job, never decreasing
    started: float = 0.0  # time.time()
    finished: float | None = None
    cancel_requested: bool = False
    result: Any = None  # what the work returned (an EngineEntry for builds)
    error: str = ""  # one line for the user when failed

    @property
    def active(self) -> bool:
        return self.state == RUNNING

    @property
    def elapsed(self) -> float:
        return (self.finished or time.time()) - self.started

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for API routes."""
        result = self.result.to_dict() if hasattr(self.result, "to_dict") else self.result
        return {"id": self.id, "title": self.title, "state": self.state, "phase": self.phase,
                "fraction": round(self.fraction, 4), "started": self.started, "finished": self.finished,
                "elapsed_s": round(self.elapsed, 2), "cancel_requested": self.cancel_requested,
                "result": result, "error": self.error}


@dataclass(frozen=True)
class JobStart:
    """The answer to `start`: a job id, or why no job was started."""
    job_id: str | None = None
    refused: str = ""

    @property
    def ok(self) -> bool:
        return self.job_id is not None


def user_message(exc: BaseException) -> str:
    """One line a user can act on; details stay in the log."""
    if isinstance(exc, BuildCancelled):
        return "cancelled; nothing was written"
    if isinstance(exc, UserError):  # its message is written for users; others by type only
        text = str(exc)
    elif isinstance(exc, MemoryError):
        text = "out of memory; try a smaller profile or close other programs"
    elif disk_full(exc):
        text = f"disk full while writing {exc.filename or 'the output folder'}; nothing was changed"
    else:
        text = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no details'} (see the log)"
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


@dataclass
class _Job:
    status: JobStatus
    token: CancelToken = field(default_factory=CancelToken)


class JobRunner:
    """Runs at most one job at a time; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._running: str | None = None
        self._ids = itertools.count(1)

    def start(self, title: str, work: Work) -> JobStart:
        with self._lock:
            if self._running is not None:
                busy = self._jobs[self._running].status
                return JobStart(refused=f"a build is already running ({busy.title}, {busy.phase}, "
                                        f"{busy.fraction:.0%}); wait for it or cancel it")
            job_id = f"build-{next(self._ids)}-{int(time.time())}"
            job = _Job(JobStatus(job_id, title, RUNNING, started=time.time()))
            self._jobs[job_id] = job
            self._running = job_id
            while len(self._jobs) > HISTORY:
                self._jobs.popitem(last=False)
        thread = threading.Thread(target=self._run, args=(job, work), name=f"trt-{job_id}", daemon=True)
        thread.start()
        return JobStart(job_id=job_id)

    def _update(self, job: _Job, **changes: Any) -> None:
        with self._lock:
            job.status = replace(job.status, **changes)

    def _progress(self, job: _Job) -> ProgressFn:
        def report(phase: str, fraction: float) -> None:
            fraction = min(max(float(fraction), 0.0), 1.0)
            self._update(job, phase=phase, fraction=max(fraction, job.status.fraction))
        return report

    def _run(self, job: _Job, work: Work) -> None:
        final: dict[str, Any]
        try:
            result = work(self._progress(job), job.token)
            final = dict(state=DONE, result=result, phase="done", fraction=1.0)
        except BuildCancelled as e:
            log.info("job %s (%s) cancelled", job.status.id, job.status.title)
            final = dict(state=CANCELLED, error=user_message(e), phase="cancelled")
        except BaseException as e:  # noqa: BLE001 - a failed build must never take the host down
            log.error("job %s (%s) failed", job.status.id, job.status.title, exc_info=True)
            final = dict(state=FAILED, error=user_message(e), phase="failed")
        with self._lock:
            job.status = replace(job.status, finished=time.time(), **final)
            if self._running == job.status.id:
                self._running = None

    def status(self, job_id: str) -> JobStatus | None:
        """The job's status, or None for an unknown (or long forgotten) id."""
        with self._lock:
            job = self._jobs.get(job_id)
            return job.status if job else None

    def cancel(self, job_id: str) -> bool:
        """Ask a running job to stop; False when it is unknown or already finished."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or not job.status.active:
                return False
            job.token.cancel()
            job.status = replace(job.status, cancel_requested=True, phase=f"cancelling ({job.status.phase})")
            return True

    def current(self) -> JobStatus | None:
        """The running job, if any."""
        with self._lock:
            return self._jobs[self._running].status if self._running else None

    def latest(self) -> JobStatus | None:
        """The most recently started job, running or finished (for a page opened mid-build)."""
        with self._lock:
            return next(reversed(self._jobs.values())).status if self._jobs else None

    def wait(self, job_id: str, timeout: float | None = None, poll: float = 0.05) -> JobStatus | None:
        """Block until the job finishes (or the timeout passes); for scripts and tests."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.status(job_id)
            if status is None or not status.active or (deadline is not None and time.monotonic() > deadline):
                return status
            time.sleep(poll)


RUNNER = JobRunner()


def start(title: str, work: Work) -> JobStart:
    """Start `work` in the background unless a build is running (then `refused` says so)."""
    return RUNNER.start(title, work)


def status(job_id: str) -> JobStatus | None:
    return RUNNER.status(job_id)


def cancel(job_id: str) -> bool:
    return RUNNER.cancel(job_id)


def current() -> JobStatus | None:
    return RUNNER.current()


def latest() -> JobStatus | None:
    return RUNNER.latest()
