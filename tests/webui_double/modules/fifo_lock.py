"""modules/fifo_lock.py: FIFOLock. The real one is not reentrant; neither is this one, so code that
takes it twice deadlocks here too (acquiring waits at most 10 s, then raises, so tests see it)."""
import threading


class FIFOLock:
    def __init__(self):
        self._lock = threading.Lock()

    def acquire(self, blocking=True):
        return self._lock.acquire(blocking, 10.0 if blocking else -1)

    def release(self):
        self._lock.release()

    def __enter__(self):
        if not self.acquire():
            raise RuntimeError("queue_lock not acquired within 10 s: taken twice (the real WebUI would deadlock)")

    def __exit__(self, t, v, tb):
        self.release()
