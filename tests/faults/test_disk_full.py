"""A full disk, for real: the workspace on a small tmpfs where this machine allows mounting one
(root in a container that may mount), else a file-size limit (`ulimit -f`) on the child process.
Each failure is one line, nothing half-written stays, and nothing that was there is lost."""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.faults.helpers import cli, leftovers, one_line_error, unregistered

MIB = 1024**2


def try_mount(folder: Path, size_mib: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    if os.environ.get("FAULTS_NO_MOUNT"):  # to try the file-size-limit way on a machine that could mount
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)],
                          capture_output=True, timeout=30)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """mount(size_mib) -> (workspace folder, preexec_fn for the child: a file-size limit when no mount)."""
    mounted: list[Path] = []

    def make(size_mib: int):
        folder = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
        if try_mount(folder, size_mib):
            mounted.append(folder)
            return folder, None

        def limit():  # writes past the limit fail with EFBIG instead of killing the process
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (size_mib * MIB, size_mib * MIB))
        return folder, limit
    yield make
    for folder in mounted:
        subprocess.run(["umount", str(folder)], capture_output=True, timeout=30)


def cli_limited(preexec, *args):
    if preexec is None:
        return cli(*args)
    from tests.faults.helpers import REPO
    import sys
    return subprocess.run([sys.executable, "-m", "sd_unet_trt", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, preexec_fn=preexec)


def index_bytes(root: Path) -> bytes | None:
    path = root / "Unet-trt" / "manifest.json"
    return path.read_bytes() if path.is_file() else None


def test_an_export_that_does_not_fit_is_one_line_and_leaves_nothing(small_disk):
    root, preexec = small_disk(20)  # the tiny model's fp32 export is 41 MB
    proc = cli_limited(preexec, "build", "--backend", "onnxruntime", "--precision", "fp32", "--dir", root)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert line.startswith("error: disk full") and "nothing was changed" in line, line
    assert leftovers(root) == [] and index_bytes(root) is None


def test_an_engine_that_does_not_fit_keeps_the_engines_that_were_there(small_disk):
    root, preexec = small_disk(100)
    if preexec is not None:
        pytest.skip("needs a mount: a file-size limit cannot let the export in and keep the engine out")
    first = cli("build", "--backend", "onnxruntime", "--precision", "fp32", "--preset", "1", "--dir", root)
    assert first.returncode == 0, first.stderr[-2000:]
    before = index_bytes(root)
    free = os.statvfs(root).f_bavail * os.statvfs(root).f_frsize
    (root / "filler").write_bytes(b"\0" * (free - 20 * MIB))  # room for less than one more engine
    proc = cli("build", "--backend", "onnxruntime", "--precision", "fp32", "--dir", root)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert line.startswith("error: disk full") and "nothing was changed" in line, line
    assert index_bytes(root) == before and leftovers(root) == [] and unregistered(root) == []
    assert cli("list", "--dir", root).stdout.startswith("ready ")


def test_recover_on_a_full_disk_leaves_the_broken_manifest_as_it_was(small_disk):
    root, preexec = small_disk(100)
    engines = root / "Unet-trt"
    engines.mkdir(parents=True)
    broken = b"{" + b'"entries": [' * 2000  # a broken index, 24 KB
    (engines / "manifest.json").write_bytes(broken)
    if preexec is None:
        free = os.statvfs(root).f_bavail * os.statvfs(root).f_frsize
        (root / "filler").write_bytes(b"\0" * free)
    else:
        def preexec_tiny(original=preexec):  # a limit below the copy's size
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))
        preexec = preexec_tiny
    proc = cli_limited(preexec, "recover", "--dir", root)
    assert proc.returncode == 2, proc.stdout
    line = one_line_error(proc)
    assert "nothing was changed" in line, line
    assert (engines / "manifest.json").read_bytes() == broken
    assert [p.name for p in engines.iterdir() if p.name.startswith("manifest.json")] == ["manifest.json"]
