"""modules/call_queue.py: queue_lock. The real FIFOLock is not reentrant; neither is this one, so
code that takes it twice deadlocks here too (tests acquire with a timeout to see it)."""
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


queue_lock = FIFOLock()
