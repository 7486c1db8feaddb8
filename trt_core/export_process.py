"""Exporting a checkpoint file to ONNX in a child process (`python <package>/__main__.py export`).

The child reads the UNet from the file, so the export holds the checkpoint's own weights whatever
the host has done to its model in memory (a merged LoRA). It also keeps the export's memory and
its libraries out of the host: inside the WebUI, onnx and onnx-graphsurgeon need a newer protobuf
than the WebUI pins, so install.py puts them in a folder of their own that only this child puts
first on its path. Progress comes back as lines on the child's stdout; cancelling ends the child
and removes what it had started to write.
"""
from __future__ import annotations

import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from sd_unet_trt.trt_core.atomic import TEMP_MARK
from sd_unet_trt.trt_core.checkpoint_file import FileStamp
from sd_unet_trt.trt_core.export import ExportError, ExportResult
from sd_unet_trt.trt_core.export_tools import EXTENSION_ROOT, export_tools_path
from sd_unet_trt.trt_core.progress import BuildCancelled, CancelToken, ProgressFn, no_progress

log = logging.getLogger(__name__)
PROGRESS_PREFIX = "progress "
POLL_S = 0.2


def child_command(args: list[str]) -> list[str]:
    """This Python running the command line from this package's folder. Through `-c`, so that the
    folder does not go on the child's sys.path (its subfolders would become top-level modules) and
    nothing has to come off it (taking an entry off sys.path recomputes namespace packages such as
    `google`, and the export tools' newer protobuf would then be hidden by the WebUI's)."""
    main = str(EXTENSION_ROOT / "__main__.py")
    runner = f"import runpy, sys; sys.argv[0] = {main!r}; runpy.run_path({main!r}, run_name='__main__')"
    return [sys.executable, "-c", runner, *args]


def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    tools = export_tools_path()
    if tools is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tools), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def progress_line(phase: str, fraction: float) -> str:
    return f"{PROGRESS_PREFIX}{fraction:.4f} {phase}"


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def export_checkpoint_file(path: Path, sha256: str, stamp: FileStamp, family_name: str, out_dir: Path,
                           weights: str, prediction: str = "eps", device: str = "cpu",
                           progress: ProgressFn = no_progress, cancel: CancelToken | None = None) -> ExportResult:
    """Export the file's UNet to `out_dir` in a child process and read the result back."""
    from sd_unet_trt.models.families import family_named

    run_export_child(["export", "--checkpoint", str(path), "--out", str(out_dir), "--weights", weights,
                      "--prediction", prediction, "--family", family_name, "--sha256", sha256,
                      "--expect-stamp", f"{stamp.size}:{stamp.mtime_ns}", "--device", device, "--progress-lines"],
                     path, out_dir, progress, cancel)
    return ExportResult.read(Path(out_dir), family_named(family_name), weights)


def run_export_child(args: list[str], path: Path, out_dir: Path, progress: ProgressFn = no_progress,
                     cancel: CancelToken | None = None) -> None:
    """Run an export command of the command line (`export`, `export-controlnet`) on the file at
    `path` in a child process that writes `out_dir`; its one line of error comes back as ExportError."""
    cancel = cancel or CancelToken()
    command = child_command(args)
    Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=child_environment(), cwd=str(Path(out_dir).parent))
    lines: queue.Queue = queue.Queue()
    errors: list[str] = []
    readers = [threading.Thread(target=_read_lines, args=(child.stdout, lines), daemon=True),
               threading.Thread(target=lambda: errors.extend(line.rstrip() for line in child.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    try:
        while True:
            if cancel.cancelled:
                raise BuildCancelled("build cancelled")
            try:
                line = lines.get(timeout=POLL_S)
            except queue.Empty:
                continue
            if line is None:
                break
            if line.startswith(PROGRESS_PREFIX):
                fraction, _, phase = line[len(PROGRESS_PREFIX):].partition(" ")
                progress(phase, float(fraction))
        code = child.wait()
    except BaseException:
        child.kill()
        child.wait()
        for partial in Path(out_dir).parent.glob(f"{TEMP_MARK}{child.pid}-*"):
            shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        for reader in readers:
            reader.join(timeout=5)
    if code != 0:
        said = [line for line in errors if line.strip()]
        last = (said or [f"exit code {code}"])[-1]
        if code == 2 and last.startswith("error: "):  # the child's one line for the user (cli/errors.py), as it is
            raise ExportError(f"{Path(path).name}: {last[len('error: '):]}")
        log.warning("the export process of %s ended with code %s:\n%s", Path(path).name, code, "\n".join(said[-40:]))
        raise ExportError(f"the export of {Path(path).name} failed: {last}")
