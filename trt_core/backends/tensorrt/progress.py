"""TensorRT's build progress (nested phases of steps) as one fraction for the tab's progress bar,
and the caller's cancel button as TensorRT's "stop" answer."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from types import ModuleType

from sd_unet_trt.trt_core.progress import CancelToken, ProgressFn


@dataclass
class _Phase:
    parent: str | None
    steps: int
    done: int = 0


class PhaseTracker:
    """Turns phase_start / step_complete / phase_finish into a fraction in [0, 1] that never goes
    back (TensorRT may start several top-level phases in a row)."""

    def __init__(self) -> None:
        self._phases: dict[str, _Phase] = {}
        self._roots_done = 0.0
        self._best = 0.0

    def start(self, name: str, parent: str | None, steps: int) -> None:
        self._phases[name] = _Phase(parent if parent in self._phases else None, max(int(steps), 1))

    def step(self, name: str, step: int) -> None:
        phase = self._phases.get(name)
        if phase is not None:
            phase.done = max(phase.done, min(step + 1, phase.steps))

    def finish(self, name: str) -> None:
        phase = self._phases.pop(name, None)
        if phase is not None:
            for child in [n for n, p in self._phases.items() if p.parent == name]:
                self._phases.pop(child)

    def _fraction_of(self, name: str) -> float:
        phase = self._phases[name]
        children = [n for n, p in self._phases.items() if p.parent == name]
        inner = self._fraction_of(children[-1]) if children and phase.done < phase.steps else 0.0
        return min((phase.done + inner) / phase.steps, 1.0)

    def fraction(self) -> float:
        roots = [n for n, p in self._phases.items() if p.parent is None]
        current = self._fraction_of(roots[-1]) if roots else 1.0 if self._best else 0.0
        self._best = max(self._best, current)
        return self._best

    def label(self) -> str:
        chain = [n for n in self._phases]
        return chain[-1] if chain else ""


def make_progress_monitor(trt: ModuleType, progress: ProgressFn, cancel: CancelToken, start: float, end: float):
    """A trt.IProgressMonitor reporting into progress(phase, fraction) scaled to [start, end].
    TensorRT calls it from its own threads; returning False from step_complete cancels the build."""

    class ProgressMonitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._tracker = PhaseTracker()
            self._last: tuple[str, int] | None = None

        def _report(self) -> None:
            # TensorRT for RTX reports thousands of steps per phase: pass on changes of 0.1 % or of phase
            label, fraction = f"tensorrt: {self._tracker.label() or 'building'}", self._tracker.fraction()
            if (label, round(fraction * 1000)) != self._last:
                self._last = (label, round(fraction * 1000))
                progress(label, start + (end - start) * fraction)

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                self._tracker.start(phase_name, parent_phase, num_steps)
                self._report()

        def step_complete(self, phase_name, step):
            with self._lock:
                self._tracker.step(phase_name, step)
                self._report()
            return not cancel.cancelled

        def phase_finish(self, phase_name):
            with self._lock:
                self._tracker.finish(phase_name)

    return ProgressMonitor()
