"""WebUI installer hook (also runs standalone: `python install.py`).

It never changes a package the WebUI's Python already has. pip is run through this Python
(`sys.executable -m pip`) with a constraints file that pins every installed distribution at its
installed version, wheels only; what pip plans is read from its dry-run report first, and a plan
that would change an installed package, or that no version can satisfy, installs nothing and
prints one line saying what the extension does without that part. Running it again changes
nothing. Every child process has a timeout: the WebUI's start-up never crashes or hangs here.

What goes where:
- ONNX Runtime and TensorRT run inside the WebUI, so they go into its environment, in versions
  that work with its pins (numpy 1.26, protobuf 3.20 in WebUI v1.10). The TensorRT library is the
  one for the GPU: TensorRT for RTX on GeForce and RTX cards, TensorRT 10/11 on data-center chips
  and Turing, as the bindings and libraries wheels for torch's CUDA major (cu12 or cu13).
- The export tools (onnx, onnx-graphsurgeon) need a newer protobuf than the WebUI pins. They are
  only used by the export, which runs in a child process (the checkpoint file's UNet -> ONNX), so
  they go into a folder of their own, `.export-tools/<python>-<platform>/`, that only that child
  process puts on its path. The WebUI process never imports them.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPORT_TOOLS_DIR = HERE / ".export-tools"
EXPORT_TOOLS_RECORD = "installed.json"
PIP_TIMEOUT_S = 1800  # the TensorRT libraries are a large download
PROBE_TIMEOUT_S = 180
MIN_CAPABILITY = (7, 5)
# Runs in a child process: a broken driver can hang CUDA initialisation, and that must not hang us.
TORCH_PROBE = """
import json, torch
cap = None
ok = torch.cuda.is_available()
if ok:
    cap = list(torch.cuda.get_device_capability(0))
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": ok, "capability": cap}))
"""


def say(message: str) -> None:
    print(f"[sd-unet-trt] {message}", flush=True)


@dataclass
class Part:
    """Packages installed together or not at all."""
    title: str
    requirements: list[str]
    modules: list[str]  # what must import afterwards
    without: str  # what the extension does when this part is missing
    free: list[str] = field(default_factory=list)  # installed packages this part may shadow in its own folder
    pip_options: list[str] = field(default_factory=list)  # e.g. another index its wheels come from


ONNX_RUNTIME = Part("ONNX Runtime", ["onnxruntime>=1.16"], ["onnxruntime"],
                    "engine builds cannot be checked and the onnxruntime backend is unavailable")
EXPORT_TOOLS = Part("export tools (onnx, onnx-graphsurgeon)", ["onnx>=1.14", "onnx-graphsurgeon>=0.5"],
                    ["onnx", "onnx_graphsurgeon"], "checkpoints cannot be exported to ONNX (engines already built still work)",
                    free=["protobuf"])


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_versions() -> dict[str, str]:
    out = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            out.setdefault(canonical(name), dist.version)
    return out


def install_skipped() -> bool:
    try:
        import launch  # the WebUI's; absent when run standalone
    except Exception:
        return False
    return bool(getattr(getattr(launch, "args", None), "skip_install", False))


def run(command: list[str], timeout: float, env: dict | None = None) -> tuple[bool, str]:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {int(timeout)} s"
    except OSError as e:
        return False, str(e)
    output = (result.stdout if result.returncode == 0 else result.stderr or result.stdout).strip()
    return result.returncode == 0, output


def last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip() and not line.startswith("WARNING: Location")]
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors or lines or ["no output"])[-1].strip()


def modules_import(modules: list[str], extra_path: Path | None = None) -> tuple[bool, str]:
    """Whether the modules import in a fresh child process (with `extra_path` first on its path)."""
    env = dict(os.environ)
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), *filter(None, [env.get("PYTHONPATH")])])
    code = "; ".join(f"import {m}" for m in modules)
    return run([sys.executable, "-c", code], PROBE_TIMEOUT_S, env)


def write_constraints(installed: dict[str, str], free: list[str]) -> Path:
    """Every installed distribution pinned at its version, but the ones a part may shadow."""
    free = {canonical(n) for n in free}
    handle, path = tempfile.mkstemp(prefix="sd-unet-trt-constraints-", suffix=".txt")
    with os.fdopen(handle, "w") as f:
        f.writelines(f"{name}=={version}\n" for name, version in sorted(installed.items()) if name not in free)
    return Path(path)


@dataclass
class Plan:
    packages: list[tuple[str, str]]  # (canonical name, version) pip would install
    problem: str = ""  # why nothing may be installed


def plan(requirements: list[str], installed: dict[str, str], free: list[str], ignore_installed: bool,
         pip_options: list[str] | None = None) -> Plan:
    """What pip would install for `requirements` under the constraints, from its dry-run report."""
    constraints = write_constraints(installed, free)
    try:
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-",
                   "--only-binary=:all:", "--constraint", str(constraints), *(pip_options or []), *requirements]
        if ignore_installed:
            command.insert(5, "--ignore-installed")
        ok, output = run(command, PIP_TIMEOUT_S)
    finally:
        constraints.unlink(missing_ok=True)
    if not ok:
        if "no such option" in output:
            return Plan([], "this pip is too old to plan an install (22.2 or newer needed: python -m pip install -U pip)")
        return Plan([], f"no versions fit the installed packages ({last_line(output)})")
    try:
        report = json.loads(output[output.index("{"):])
        packages = [(canonical(item["metadata"]["name"]), item["metadata"]["version"]) for item in report["install"]]
    except (ValueError, KeyError, TypeError) as e:
        return Plan([], f"could not read pip's plan ({type(e).__name__}: {e})")
    free_names = {canonical(n) for n in free}
    changes = [f"{name} {installed[name]} -> {version}" for name, version in packages
               if name in installed and installed[name] != version and name not in free_names]
    if changes:
        return Plan([], "it would change installed packages: " + ", ".join(changes))
    return Plan(packages)


def pip_install(packages: list[tuple[str, str]], target: Path | None = None,
                pip_options: list[str] | None = None) -> tuple[bool, str]:
    """Exactly the planned versions, nothing resolved again."""
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", *(pip_options or []),
               *[f"{name}=={version}" for name, version in packages]]
    if target is not None:
        command += ["--target", str(target)]
    ok, output = run(command, PIP_TIMEOUT_S)
    return ok, "" if ok else last_line(output)


def install_into_environment(part: Part) -> None:
    """A part the WebUI process imports: into this environment, changing nothing installed."""
    if all(importlib.util.find_spec(m) is not None for m in part.modules):
        return
    installed = installed_versions()
    planned = plan(part.requirements, installed, [], ignore_installed=False, pip_options=part.pip_options)
    if planned.problem:
        say(f"{part.title} not installed: {planned.problem}; {part.without}")
        return
    say(f"installing {part.title}: " + ", ".join(f"{n}=={v}" for n, v in planned.packages))
    ok, error = pip_install(planned.packages, pip_options=part.pip_options)
    after = installed_versions()
    changed = [f"{n} {v} -> {after.get(n)}" for n, v in installed.items() if after.get(n) != v]
    if changed:
        say(f"warning: installing {part.title} changed " + ", ".join(changed))
    if not ok:
        say(f"{part.title} not installed: {error}; {part.without}")


def export_tools_folder() -> Path:
    return EXPORT_TOOLS_DIR / f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"


def export_tools_record(packages: dict[str, str], environment: dict[str, str]) -> str:
    """What the folder's record says: for which Python it was installed (the export reads that,
    trt_core/export_tools.py), what went in, and which of the environment's packages it relies on."""
    return json.dumps({"python": sys.version, "packages": packages, "environment": environment}, indent=1)


def export_tools_current(folder: Path, installed: dict[str, str]) -> bool:
    """Whether the folder was installed against the environment as it is now."""
    try:
        record = json.loads((folder / EXPORT_TOOLS_RECORD).read_text())
        return record["python"] == sys.version and all(installed.get(n) == v for n, v in record["environment"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def export_tools_ours(folder: Path) -> bool:
    """Whether the folder is one this installer wrote: a real folder with its record."""
    try:
        record = json.loads((folder / EXPORT_TOOLS_RECORD).read_text())
        return not folder.is_symlink() and isinstance(record, dict) and {"python", "packages"} <= record.keys()
    except (OSError, ValueError):
        return False


def replace_folder(folder: Path, new: Path) -> None:
    """Put `new` in the place of `folder` (one of ours): the old one is renamed aside, the new one in,
    and the old one is put back if that fails; only then is the old one deleted."""
    if not folder.exists():
        os.replace(new, folder)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".partial-{folder.name}-old-", dir=folder.parent))
    try:
        os.replace(folder, aside / folder.name)
        try:
            os.replace(new, folder)
        except BaseException:
            os.replace(aside / folder.name, folder)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def install_export_tools(part: Part = EXPORT_TOOLS) -> None:
    """The export tools in a folder of their own, next to (never over) this environment's packages:
    only what the environment lacks or pins too old for them goes there."""
    if modules_import(part.modules)[0]:
        return  # this environment has them already (a standalone install)
    folder = export_tools_folder()
    installed = installed_versions()
    if export_tools_current(folder, installed):
        return
    if (folder.exists() or folder.is_symlink()) and not export_tools_ours(folder):
        say(f"{part.title} not installed: {folder} was not written by this installer (it has no "
            f"{EXPORT_TOOLS_RECORD}) and is left as it is; move it away and start again; {part.without}")
        return
    planned = plan(part.requirements, installed, part.free, ignore_installed=True)
    if planned.problem:
        say(f"{part.title} not installed: {planned.problem}; {part.without}")
        return
    own = [(n, v) for n, v in planned.packages if installed.get(n) != v]
    shared = {n: v for n, v in planned.packages if installed.get(n) == v}
    say(f"installing {part.title} into {folder.relative_to(HERE)}: " + ", ".join(f"{n}=={v}" for n, v in own))
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".partial-{folder.name}-", dir=folder.parent))
    try:
        ok, error = pip_install(own, staging)
        if ok:
            ok, error = modules_import(part.modules, staging)
            error = last_line(error) if not ok else ""
        if not ok:
            say(f"{part.title} not installed: {error}; {part.without}")
            return
        (staging / EXPORT_TOOLS_RECORD).write_text(export_tools_record(dict(own), shared))
        replace_folder(folder, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# Which TensorRT library for which GPU, and its wheels: the rule of
# trt_core/backends/tensorrt/library.py, repeated because this file runs before the extension can
# be imported (tests/test_install.py holds the two together).
RTX_RUNS_ON = {(8, 0), (8, 6), (8, 7), (8, 9), (12, 0), (12, 1)}
LIBRARY_LABELS = {"tensorrt": "TensorRT", "tensorrt_rtx": "TensorRT for RTX"}
# TensorRT's library wheels are published on NVIDIA's index (PyPI holds a source stub that fetches
# them from there while it builds); TensorRT for RTX's are on PyPI itself.
NVIDIA_INDEX = "https://pypi.nvidia.com"
POLYGRAPHY = "polygraphy>=0.50"  # loads networks and configures builds for both libraries (pure Python)


def tensorrt_library(capability: tuple[int, int]) -> str:
    """TensorRT for RTX on the GPUs it runs on (GeForce and RTX cards), full TensorRT elsewhere."""
    return "tensorrt_rtx" if tuple(capability) in RTX_RUNS_ON else "tensorrt"


def tensorrt_requirements(library: str, cuda_version: str | None) -> list[str]:
    """The bindings and libraries wheels for torch's CUDA major, and Polygraphy; [] without CUDA 12 or 13."""
    major = (cuda_version or "").split(".")[0]
    if major not in ("12", "13"):
        return []
    if library == "tensorrt_rtx":
        return [f"tensorrt-rtx-cu{major}-bindings>=1.0,<2", f"tensorrt-rtx-cu{major}-libs>=1.0,<2", POLYGRAPHY]
    return [f"tensorrt-cu{major}-bindings>=10.0,<12", f"tensorrt-cu{major}-libs>=10.0,<12", POLYGRAPHY]


def installed_tensorrt(library: str) -> str | None:
    """The version of the library's bindings, whichever CUDA major (or the meta package's)."""
    stem = library.replace("_", "-")
    for dist in (f"{stem}-cu12-bindings", f"{stem}-cu13-bindings", f"{library}_bindings", stem):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def probe_torch() -> dict | None:
    ok, output = run([sys.executable, "-c", TORCH_PROBE], PROBE_TIMEOUT_S)
    if not ok:
        return None
    try:
        return json.loads(output.splitlines()[-1])
    except (ValueError, IndexError):
        return None


def tensorrt_blocker(probe: dict | None) -> str:
    """Why no TensorRT library can be used here, as one line ("" when one can)."""
    if probe is None:
        return "TensorRT skipped: could not start torch to look at the GPU"
    if not probe["cuda"]:
        return f"TensorRT skipped: torch {probe['torch']} has no CUDA (TensorRT needs an NVIDIA GPU)"
    if not tensorrt_requirements("tensorrt", probe["cuda"]):
        return f"TensorRT skipped: torch is built for CUDA {probe['cuda']}; TensorRT's wheels need CUDA 12 or 13"
    if not probe["gpu"]:
        return "TensorRT skipped: no usable NVIDIA GPU (check the driver: torch.cuda.is_available() is False)"
    capability = tuple(probe["capability"])
    if capability < MIN_CAPABILITY:
        return (f"TensorRT skipped: this GPU (compute capability {capability[0]}.{capability[1]}) is older than "
                f"TensorRT 10 and TensorRT for RTX support (7.5, Turing, or newer)")
    return ""


def install_tensorrt() -> None:
    """The library for this GPU, unless one that serves it is installed already."""
    if installed_tensorrt("tensorrt_rtx") or installed_tensorrt("tensorrt"):
        return  # the extension says at run time whether the installed one serves this GPU
    probe = probe_torch()
    blocker = tensorrt_blocker(probe)
    if blocker:
        say(blocker)
        return
    library = tensorrt_library(tuple(probe["capability"]))
    extra = [] if library == "tensorrt_rtx" else ["--extra-index-url", NVIDIA_INDEX]
    install_into_environment(Part(LIBRARY_LABELS[library], tensorrt_requirements(library, probe["cuda"]),
                                  [f"{library}_bindings"], "engines are built with the other backends",
                                  pip_options=extra))


def main() -> None:
    if install_skipped():
        return
    install_into_environment(ONNX_RUNTIME)
    install_export_tools()
    install_tensorrt()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # an installer hook must never stop the WebUI from starting
        say(f"install step failed: {type(e).__name__}: {e}")
