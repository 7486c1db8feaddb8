"""Ctrl-C, for real: SIGINT sent to a real CLI build at each phase (import, export, verify, build,
register). Each answers exit 130 and one line, and leaves nothing half-written: no temp file or
folder, no engine the manifest does not list, no entry without its engine. The child is held at
the progress line (or, for the import, the `-X importtime` line) that starts the phase, so the
signal lands in that phase however short it is (held_stderr.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from sd_unet_trt.models.families import TINY
from sd_unet_trt.trt_core.export import ExportResult
from sd_unet_trt.trt_core.interrupts import INTERRUPTED_EXIT, INTERRUPTED_LINE
from sd_unet_trt.trt_core.manifest import Manifest
from tests.faults.held_stderr import WRITE_SYSCALL, HeldChild
from tests.faults.helpers import REPO, leftovers, unregistered

pytestmark = pytest.mark.skipif(WRITE_SYSCALL is None or not sys.platform.startswith("linux"),
                                reason="holds the child through Linux's /proc/PID/syscall")

BUILD = ["-m", "sd_unet_trt", "build", "--backend", "onnxruntime", "--precision", "fp32", "--preset", "1"]

# phase -> the text the child is about to write when the signal is sent
PHASES = {
    "import": "sd_unet_trt.models.unet",  # the line `-X importtime` writes once torch and our UNet are imported
    "export": "export: tracing the UNet to ONNX",
    "verify": "verify: ONNX Runtime against PyTorch",
}
# The build (ONNX Runtime: one file copy) and register phases last microseconds; since ONNX Runtime's
# ~240 warnings left stderr, their first lines follow the one before within the holder's window, so
# a signal cannot be placed in them reliably: they are not parametrized here (issue 18 closing note).


def last_line(stderr: str) -> str:
    """The last line of stderr, progress bars (redrawn with \\r) split off."""
    return [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()][-1]


@pytest.mark.parametrize("phase", PHASES)
def test_ctrl_c_in_each_phase_of_a_build_exits_130_and_keeps_nothing_half_written(tmp_path, phase):
    workspace = tmp_path / "ws"
    python = [sys.executable, "-X", "importtime"] if phase == "import" else [sys.executable]
    child = HeldChild(python + BUILD + ["--dir", str(workspace)], REPO, tmp_path / "stdout.txt")
    child.hold_at(PHASES[phase])
    # Each phase lasts a second or more (importing goes on for half a second after that line; export
    # and verify take seconds): when its line went by right after the one before it, the signal still
    # lands in it.
    child.proc.send_signal(signal.SIGINT)
    code = child.finish()
    stderr = child.text()

    assert code == INTERRUPTED_EXIT, stderr[-3000:]
    assert "Traceback" not in stderr and last_line(stderr) == INTERRUPTED_LINE, stderr[-3000:]
    assert leftovers(workspace) == [] and unregistered(workspace) == []
    engines = workspace / "Unet-trt"
    if engines.is_dir():
        assert Manifest(engines).entries() == []
        assert [p.name for p in engines.iterdir() if not p.name.startswith(".")] in ([], ["manifest.json"], ["weights"])
    exports = workspace / "Unet-onnx"
    kept = sorted(exports.iterdir()) if exports.is_dir() else []
    if phase in ("import", "export"):
        assert kept == []
    for folder in kept:  # an export that was finished before the interrupt is kept whole
        ExportResult.read(folder, TINY, "fp32")


ORT_IMPORT = """
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
try:
    status = OnnxRuntimeBackend().availability()
except KeyboardInterrupt as e:
    print("interrupted", type(e.__cause__).__name__)
else:
    print("available" if status.available else "reported:", status.reason)
"""


def test_ctrl_c_inside_onnxruntimes_import_is_an_interrupt_not_a_missing_library():
    """pybind11 turns an interrupt inside an extension's initialization into ImportError; such an
    import must stop the program, not report ONNX Runtime as not installed. The signal is sent a few
    milliseconds into the import of onnxruntime's extension module (which takes 20-100 ms)."""
    answers = []
    for delay in (0.005, 0.01, 0.02, 0.04):
        child = subprocess.Popen([sys.executable, "-X", "importtime", "-c", ORT_IMPORT], cwd=REPO,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for line in child.stderr:
            if line.rstrip().endswith("onnxruntime.capi._ld_preload"):  # the extension module loads next
                time.sleep(delay)
                child.send_signal(signal.SIGINT)
                break
        out, err = child.communicate(timeout=120)
        answers.append(out.strip() or f"exit {child.returncode}: {err.splitlines()[-1:]}")
    assert not [a for a in answers if not a.startswith("interrupted")], answers
    if "interrupted ImportError" not in answers:
        pytest.skip(f"no interrupt landed inside the extension's initialization here: {answers}")
