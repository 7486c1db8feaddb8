"""install.py: the right TensorRT wheel for torch's CUDA, through this Python's pip, never a hang."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from sd_unet_trt.trt_core.backends.tensorrt.library import pip_requirement

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def install():
    spec = importlib.util.spec_from_file_location("sd_unet_trt_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installer_and_backend_ask_for_the_same_wheel(install):
    for cuda in ["12.1", "12.8", "13.0", "11.8", None, ""]:
        assert install.tensorrt_requirement(cuda) == pip_requirement(cuda)


def test_installs_the_wheel_for_torchs_cuda_with_this_python(install, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(install, "installed_tensorrt", lambda: None)
    monkeypatch.setattr(install, "probe_torch", lambda: {"torch": "2.1.2+cu121", "cuda": "12.1", "gpu": True,
                                                          "capability": [8, 6]})
    monkeypatch.setattr(install, "run", lambda cmd, timeout: (calls.append((cmd, timeout)), (True, "10.16.1.11"))[1])
    install.install_tensorrt()
    pip, check = calls
    assert pip[0] == [sys.executable, "-m", "pip", "install", "--prefer-binary", "tensorrt-cu12>=10.0,<11"]
    assert pip[1] == install.PIP_TIMEOUT_S and check[0][0] == sys.executable
    assert "TensorRT 10.16.1.11 installed" in capsys.readouterr().out


@pytest.mark.parametrize("present, probe, expected", [
    ("10.3.0", None, ""),  # present: nothing to do, not even a probe
    (None, {"torch": "2.1.2", "cuda": None, "gpu": False, "capability": None}, "has no CUDA"),
    (None, {"torch": "2.1.2", "cuda": "11.8", "gpu": True, "capability": [8, 6]}, "need CUDA 12 or 13"),
    (None, {"torch": "2.1.2", "cuda": "12.1", "gpu": False, "capability": None}, "check the driver"),
    (None, {"torch": "2.1.2", "cuda": "12.1", "gpu": True, "capability": [6, 1]}, "older than TensorRT 10"),
    ("11.4.0.106", {"torch": "2.9", "cuda": "12.8", "gpu": True, "capability": [8, 9]}, "leaves it alone"),
])
def test_skips_with_one_clear_line(install, monkeypatch, capsys, present, probe, expected):
    monkeypatch.setattr(install, "installed_tensorrt", lambda: present)
    monkeypatch.setattr(install, "probe_torch", lambda: probe)

    def no_pip(cmd, timeout):
        raise AssertionError(f"ran {cmd}")

    monkeypatch.setattr(install, "run", no_pip)
    install.install_tensorrt()
    out = capsys.readouterr().out.strip()
    assert (expected in out and len(out.splitlines()) == 1) if expected else out == ""


def test_a_hanging_child_is_cut_off(install):
    ok, message = install.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert not ok and "timed out" in message


def test_runs_standalone_and_never_fails(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "install.py")], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert len(result.stdout.strip().splitlines()) <= 1
