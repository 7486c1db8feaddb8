"""install.py: nothing the WebUI's Python already has changes version; what fits goes in, what does
not is one line; a second run changes nothing; the TensorRT library suits the GPU and its wheels
match torch's CUDA; TensorRT for RTX's real wheels fit a WebUI-pinned environment."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from sd_unet_trt.trt_core.backends.tensorrt import library as libraries

ROOT = Path(__file__).resolve().parents[1]
# the WebUI v1.10.1 pins (requirements_versions.txt) that the packages we add depend on
WEBUI_PINS = ["numpy==1.26.2", "protobuf==3.20.0"]


def load_installer(path: Path = ROOT / "install.py"):
    spec = importlib.util.spec_from_file_location("sd_unet_trt_install", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def install():
    return load_installer()


CAPABILITIES = [(7, 5), (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 3), (12, 0), (12, 1)]


def test_installer_and_backend_pick_the_same_library_and_wheels(install):
    for capability in CAPABILITIES:
        assert install.tensorrt_library(capability) == libraries.preferred_library(capability)
    for library in ("tensorrt", "tensorrt_rtx"):
        for cuda in ["12.1", "12.8", "13.0", "11.8", None, ""]:
            assert install.tensorrt_requirements(library, cuda) == libraries.pip_requirements(library, cuda)


def test_installer_and_export_agree_on_the_export_tools_folder(install, monkeypatch, tmp_path):
    """install.py cannot import the package (it runs first), so it spells the folder and its record
    itself: the folder it fills is the one the export's child puts on its path, and a record it
    writes is one the export accepts, for this Python only."""
    from sd_unet_trt.trt_core import export_tools

    assert install.export_tools_folder() == export_tools.export_tools_folder()
    monkeypatch.setattr(install, "EXPORT_TOOLS_DIR", tmp_path / install.EXPORT_TOOLS_DIR.name)
    monkeypatch.setattr(export_tools, "EXTENSION_ROOT", tmp_path)
    folder = install.export_tools_folder()
    folder.mkdir(parents=True)
    assert export_tools.export_tools_path() is None  # no record: not installed
    (folder / install.EXPORT_TOOLS_RECORD).write_text(install.export_tools_record({"onnx": "1.17.0"},
                                                                                  {"numpy": "1.26.2"}))
    assert install.export_tools_ours(folder) and install.export_tools_current(folder, {"numpy": "1.26.2"})
    assert export_tools.export_tools_path() == folder
    monkeypatch.setattr(sys, "version", sys.version + " (another build)")
    assert export_tools.export_tools_path() is None and not install.export_tools_current(folder, {"numpy": "1.26.2"})


@pytest.mark.parametrize("capability, cuda, library, requirements, index", [
    ([8, 9], "12.8", "TensorRT for RTX", ["tensorrt-rtx-cu12-bindings>=1.0,<2", "tensorrt-rtx-cu12-libs>=1.0,<2",
                                          "polygraphy>=0.50"], []),
    ([12, 0], "13.0", "TensorRT for RTX", ["tensorrt-rtx-cu13-bindings>=1.0,<2", "tensorrt-rtx-cu13-libs>=1.0,<2",
                                           "polygraphy>=0.50"], []),
    ([9, 0], "12.8", "TensorRT", ["tensorrt-cu12-bindings>=10.0,<12", "tensorrt-cu12-libs>=10.0,<12",
                                  "polygraphy>=0.50"], ["--extra-index-url", "https://pypi.nvidia.com"]),
])
def test_installs_the_library_for_the_gpu_and_torchs_cuda_like_any_part(install, monkeypatch, capability, cuda,
                                                                         library, requirements, index):
    parts = []
    monkeypatch.setattr(install, "installed_tensorrt", lambda library: None)
    monkeypatch.setattr(install, "probe_torch", lambda: {"torch": "2.9", "cuda": cuda, "gpu": True,
                                                          "capability": capability})
    monkeypatch.setattr(install, "install_into_environment", parts.append)
    install.install_tensorrt()
    assert [(p.title, p.requirements, p.pip_options) for p in parts] == [(library, requirements, index)]


@pytest.mark.parametrize("present, probe, expected", [
    ({"tensorrt": "10.3.0"}, None, ""),  # present: nothing to do, not even a probe
    ({"tensorrt_rtx": "1.7.1.116"}, None, ""),
    ({}, {"torch": "2.1.2", "cuda": None, "gpu": False, "capability": None}, "has no CUDA"),
    ({}, {"torch": "2.1.2", "cuda": "11.8", "gpu": True, "capability": [8, 6]}, "need CUDA 12 or 13"),
    ({}, {"torch": "2.1.2", "cuda": "12.1", "gpu": False, "capability": None}, "check the driver"),
    ({}, {"torch": "2.1.2", "cuda": "12.1", "gpu": True, "capability": [6, 1]}, "older than TensorRT 10"),
])
def test_tensorrt_skips_with_one_clear_line(install, monkeypatch, capsys, present, probe, expected):
    monkeypatch.setattr(install, "installed_tensorrt", present.get)
    monkeypatch.setattr(install, "probe_torch", lambda: probe)

    def no_pip(cmd, timeout, env=None):
        raise AssertionError(f"ran {cmd}")

    monkeypatch.setattr(install, "run", no_pip)
    install.install_tensorrt()
    out = capsys.readouterr().out.strip()
    assert (expected in out and len(out.splitlines()) == 1) if expected else out == ""


def test_a_plan_that_would_change_an_installed_package_installs_nothing(install, monkeypatch):
    report = {"install": [{"metadata": {"name": "onnxruntime", "version": "1.26.0"}},
                          {"metadata": {"name": "NumPy", "version": "2.4.6"}}]}
    monkeypatch.setattr(install, "run", lambda cmd, timeout, env=None: (True, json.dumps(report)))
    planned = install.plan(["onnxruntime"], {"numpy": "1.26.2"}, [], ignore_installed=False)
    assert planned.packages == [] and planned.problem == "it would change installed packages: numpy 1.26.2 -> 2.4.6"
    # a package the part may hold in its own folder is not a change of the environment
    planned = install.plan(["onnx"], {"numpy": "1.26.2", "protobuf": "3.20.0"}, ["protobuf"], ignore_installed=True)
    assert planned.problem == "it would change installed packages: numpy 1.26.2 -> 2.4.6"


def test_nothing_that_fits_is_one_line_and_installs_nothing(install):
    """A real pip resolution: no onnxruntime release is 99 or newer."""
    planned = install.plan(["onnxruntime>=99"], install.installed_versions(), [], ignore_installed=False)
    assert planned.packages == [] and planned.problem.startswith("no versions fit the installed packages")


def test_a_hanging_child_is_cut_off(install):
    ok, message = install.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert not ok and "timed out" in message


def test_runs_standalone_and_never_fails(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "install.py")], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0 and "Traceback" not in result.stderr
    assert len(result.stdout.strip().splitlines()) <= 1


def freeze(python: Path) -> dict[str, str]:
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    return {item["name"].lower().replace("_", "-"): item["version"] for item in json.loads(out)}


@pytest.fixture(scope="module")
def webui_like_venv(tmp_path_factory):
    """A fresh venv holding the WebUI's pins that matter here, and a copy of the extension's installer."""
    root = tmp_path_factory.mktemp("webui-venv")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    python = root / "venv" / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", *WEBUI_PINS], check=True, timeout=900)
    extension = root / "extension"
    extension.mkdir()
    shutil.copy(ROOT / "install.py", extension / "install.py")
    return python, extension


def test_install_into_a_webui_venv_changes_no_installed_package_and_twice_changes_nothing(webui_like_venv):
    python, extension = webui_like_venv
    before = freeze(python)
    first = subprocess.run([str(python), str(extension / "install.py")], capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr[-2000:]
    after = freeze(python)
    assert {name: after.get(name) for name in before} == before, first.stdout  # nothing changed version or left
    assert "onnxruntime" in after, first.stdout  # ONNX Runtime fits numpy 1.26 / protobuf 3.20
    check = subprocess.run([str(python), "-c", "import numpy, onnxruntime, google.protobuf as p; "
                            "print(numpy.__version__, p.__version__)"], capture_output=True, text=True, timeout=300)
    assert check.stdout.split() == ["1.26.2", "3.20.0"], check.stderr[-2000:]
    # the export tools live in their own folder: with it first on the path onnx imports, and the
    # WebUI's environment still has its own protobuf
    folders = list((extension / ".export-tools").iterdir())
    assert len(folders) == 1 and (folders[0] / "installed.json").is_file(), first.stdout
    tools = subprocess.run([str(python), "-c", "import onnx, onnx_graphsurgeon, numpy; print(numpy.__version__)"],
                           capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(folders[0])})
    assert tools.returncode == 0 and tools.stdout.strip() == "1.26.2", tools.stderr[-2000:]
    assert not list(folders[0].glob("numpy*"))  # what the environment has is not installed again
    stamp = (folders[0] / "installed.json").stat().st_mtime_ns

    second = subprocess.run([str(python), str(extension / "install.py")], capture_output=True, text=True, timeout=1800)
    assert second.returncode == 0 and "installing" not in second.stdout, second.stdout
    assert freeze(python) == after and (folders[0] / "installed.json").stat().st_mtime_ns == stamp


def test_tensorrt_for_rtx_wheels_fit_a_webui_venv_without_changing_it(webui_like_venv):
    """pip's real plan, in the WebUI-pinned venv, for the wheels a GeForce card with a CUDA 13 torch gets."""
    python, extension = webui_like_venv
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import install; "
            "p = install.plan(install.tensorrt_requirements('tensorrt_rtx', '13.0'), install.installed_versions(), "
            "[], ignore_installed=False); print(json.dumps([p.packages, p.problem]))")
    result = subprocess.run([str(python), "-c", code, str(extension)], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    packages, problem = json.loads(result.stdout.splitlines()[-1])
    assert not problem and sorted(name for name, _ in packages) == ["polygraphy", "tensorrt-rtx-cu13-bindings",
                                                                     "tensorrt-rtx-cu13-libs"]
