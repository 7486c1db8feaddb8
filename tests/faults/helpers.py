"""What the fault tests share: running the CLI and the killed build in a child process, and
looking for what a failure may have left behind."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cli(*args, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sd_unet_trt", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def killed_build(phase: str, root: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tests.faults.killed_build", phase, str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def stop(proc: subprocess.Popen) -> None:
    """Terminate a server started by a test, then kill it if it does not exit within 10 s."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """stderr's one error line; fails the test when there is a traceback or more than one line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "%|" not in line]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def leftovers(root: Path) -> list[str]:
    """Temp files and folders of builds, in both folders."""
    return sorted(p.name for d in (root / "Unet-onnx", root / "Unet-trt") if d.is_dir()
                  for p in d.iterdir() if p.name.startswith(".partial-"))


def unregistered(root: Path) -> list[str]:
    """Engine files the index does not list, and sidecars whose engine is gone."""
    engines = root / "Unet-trt"
    if not engines.is_dir():
        return []
    index = engines / "manifest.json"
    listed = {e["file"] for e in json.loads(index.read_text())["entries"]} if index.is_file() else set()
    out = []
    for path in engines.iterdir():
        if path.name.startswith(".") or not path.is_file() or path.name.startswith("manifest.json"):
            continue
        if path.suffix == ".json":
            if not (engines / path.name[:-len(".json")]).is_file():
                out.append(f"sidecar without engine: {path.name}")
        elif path.name not in listed and not any(path.name.startswith(f + ".") for f in listed):
            out.append(f"engine not in the index: {path.name}")
    return sorted(out)
