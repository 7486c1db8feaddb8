"""Holding a child process at an exact point of its run, for signals that must land in one phase.

The child's stderr is a pipe that the test keeps full (it writes filler bytes into it itself), so
every write the child makes to stderr waits until the test lets it through; meanwhile Linux's
/proc shows which write the child waits in and the text it is writing. A signal sent while the
child waits inside the write of a phase's first progress line lands in that phase, however short
the phase is. Linux only (x86_64, aarch64); the tests skip elsewhere."""
from __future__ import annotations

import os
import platform
import select
import subprocess
import time
from pathlib import Path

WRITE_SYSCALL = {"x86_64": 1, "aarch64": 64}.get(platform.machine())  # write(2)'s number
STDERR = 2
FILLER = b"\0" * 4096  # the child writes text, never NUL bytes


class HeldChild:
    def __init__(self, args: list[str], cwd: Path, stdout: Path):
        read_end, write_end = os.pipe()
        # A second open file description of the same pipe, non-blocking for the test's filler only:
        # the child's stderr (the first one) stays blocking, so its writes wait instead of failing.
        self._filler = os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK)
        with open(stdout, "w") as out:
            self.proc = subprocess.Popen(args, cwd=cwd, stdout=out, stderr=write_end)
        os.close(write_end)
        self._read = read_end
        os.set_blocking(read_end, False)
        self.stderr = bytearray()  # what the child wrote so far, filler left out
        self._fill()

    def _fill(self) -> None:
        for chunk in (FILLER, FILLER[:1]):  # whole pages, then the last page's tail byte by byte
            try:
                while True:
                    os.write(self._filler, chunk)
            except BlockingIOError:
                pass

    def _drain(self) -> None:
        try:
            while chunk := os.read(self._read, 1 << 16):
                self.stderr += chunk.replace(b"\0", b"")
        except BlockingIOError:
            pass

    def pending_write(self, deadline: float) -> bytes | None:
        """The text the child waits to write to stderr (None once it has exited)."""
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the child wrote nothing for too long; its stderr so far: {self.text()[-2000:]}")
            try:
                fields = Path(f"/proc/{self.proc.pid}/syscall").read_text().split()
            except OSError:
                fields = []
            if fields and fields[0] == str(WRITE_SYSCALL) and int(fields[1], 16) == STDERR:
                address, length = int(fields[2], 16), int(fields[3], 16)
                with open(f"/proc/{self.proc.pid}/mem", "rb") as memory:
                    memory.seek(address)
                    return memory.read(length)
            time.sleep(0.001)
        return None

    def _let_through(self) -> None:
        self._drain()  # room for the waiting write; it lands, and the pipe is filled again behind it
        select.select([self._read], [], [], 5)
        self._drain()
        self._fill()

    def hold_at(self, text: str, timeout: float = 600) -> bool:
        """Let the child's writes through until it waits to write `text`: True, it waits there now.
        False when `text` went by between two holds (the child wrote it at once after another)."""
        deadline = time.monotonic() + timeout
        while True:
            pending = self.pending_write(deadline)
            if pending is None:
                raise AssertionError(f"the child exited ({self.proc.returncode}) before writing {text!r}: "
                                     f"{self.text()[-3000:]}")
            if text.encode() in pending:
                return True
            self._let_through()
            if text.encode() in self.stderr:
                return False

    def finish(self, timeout: float = 120) -> int:
        """Let the child write freely until it exits; its exit code."""
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            select.select([self._read], [], [], 0.1)
            self._drain()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._drain()
        os.close(self._read)
        os.close(self._filler)
        return self.proc.returncode

    def text(self) -> str:
        return self.stderr.decode(errors="replace")
