"""How a long job (an export, a build) reports progress and learns that it was cancelled. Its own
module, free of the backend interface, so the export, the jobs and the CLI can use it without
importing the backends."""
from __future__ import annotations

import threading
from typing import Callable

# progress(phase, fraction of the whole job in [0, 1])
ProgressFn = Callable[[str, float], None]


def no_progress(phase: str, fraction: float) -> None:
    pass


class BuildCancelled(RuntimeError):
    """The caller cancelled the build; nothing was written."""


class CancelToken:
    """Set from another thread (the UI's Cancel button); builders poll it between steps."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise BuildCancelled("build cancelled")
