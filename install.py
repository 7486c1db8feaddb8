"""WebUI installer hook (also runs standalone: `python install.py`).

Installs what the extension needs into the running Python (`sys.executable -m pip`, never a bare
`python`), skipping whatever is present: the ONNX tools, and the TensorRT 10 wheel that matches the
CUDA major version of the installed torch. When the GPU, the driver or torch cannot run TensorRT it
prints one line saying so and installs nothing for it. Every child process has a timeout and every
failure is one printed line: the WebUI's start-up never crashes or hangs here.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import subprocess
import sys

TENSORRT_MAJOR = 10
PIP_TIMEOUT_S = 1800  # the TensorRT libraries are a large download
PROBE_TIMEOUT_S = 180
BASE_REQUIREMENTS = [("onnx", "onnx>=1.14"), ("onnx_graphsurgeon", "onnx-graphsurgeon>=0.5"),
                     ("onnxruntime", "onnxruntime>=1.16")]
# Runs in a child process: a broken driver can hang CUDA initialisation, and that must not hang us.
TORCH_PROBE = """
import json, torch
cap = None
ok = torch.cuda.is_available()
if ok:
    cap = list(torch.cuda.get_device_capability(0))
print(json.dumps({"torch": torch.__version__, "cuda": torch.version.cuda, "gpu": ok, "capability": cap}))
"""
MIN_CAPABILITY = (7, 5)


def say(message: str) -> None:
    print(f"[sd-unet-trt] {message}", flush=True)


def tensorrt_requirement(cuda_version: str | None) -> str | None:
    """tensorrt-cu12 for a CUDA 12 torch, tensorrt-cu13 for CUDA 13; None for anything else."""
    major = (cuda_version or "").split(".")[0]
    if major not in ("12", "13"):
        return None
    return f"tensorrt-cu{major}>={TENSORRT_MAJOR}.0,<{TENSORRT_MAJOR + 1}"


def install_skipped() -> bool:
    try:
        import launch  # the WebUI's; absent when run standalone
    except Exception:
        return False
    return bool(getattr(getattr(launch, "args", None), "skip_install", False))


def module_present(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def installed_tensorrt() -> str | None:
    for dist in ("tensorrt-cu12-bindings", "tensorrt-cu13-bindings", "tensorrt_bindings", "tensorrt"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def run(command: list[str], timeout: float) -> tuple[bool, str]:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {int(timeout)} s"
    except OSError as e:
        return False, str(e)
    output = (result.stdout if result.returncode == 0 else result.stderr or result.stdout).strip()
    return result.returncode == 0, output


def pip_install(requirement: str) -> bool:
    say(f"installing {requirement}")
    ok, output = run([sys.executable, "-m", "pip", "install", "--prefer-binary", requirement], PIP_TIMEOUT_S)
    if not ok:
        last = output.splitlines()[-1] if output else "no output"
        say(f"could not install {requirement}: {last}")
    return ok


def probe_torch() -> dict | None:
    ok, output = run([sys.executable, "-c", TORCH_PROBE], PROBE_TIMEOUT_S)
    if not ok:
        return None
    try:
        return json.loads(output.splitlines()[-1])
    except (ValueError, IndexError):
        return None


def tensorrt_blocker(probe: dict | None) -> str:
    """Why TensorRT cannot be used here, as one line ("" when it can)."""
    if probe is None:
        return "TensorRT skipped: could not start torch to look at the GPU"
    if not probe["cuda"]:
        return f"TensorRT skipped: torch {probe['torch']} has no CUDA (TensorRT needs an NVIDIA GPU)"
    if tensorrt_requirement(probe["cuda"]) is None:
        return f"TensorRT skipped: torch is built for CUDA {probe['cuda']}; TensorRT 10 wheels need CUDA 12 or 13"
    if not probe["gpu"]:
        return "TensorRT skipped: no usable NVIDIA GPU (check the driver: torch.cuda.is_available() is False)"
    capability = tuple(probe["capability"])
    if capability < MIN_CAPABILITY:
        return (f"TensorRT skipped: this GPU (compute capability {capability[0]}.{capability[1]}) is older than "
                f"TensorRT {TENSORRT_MAJOR} supports (7.5, Turing, or newer)")
    return ""


def install_tensorrt() -> None:
    present = installed_tensorrt()
    if present and present.split(".")[0] == str(TENSORRT_MAJOR):
        return
    probe = probe_torch()
    blocker = tensorrt_blocker(probe)
    if blocker:
        say(blocker)
        return
    if present and int(present.split(".")[0]) > TENSORRT_MAJOR:
        say(f"TensorRT {present} is installed; this extension uses TensorRT {TENSORRT_MAJOR}.x and leaves it alone")
        return
    if pip_install(tensorrt_requirement(probe["cuda"])):
        ok, output = run([sys.executable, "-c", "import tensorrt; print(tensorrt.__version__)"], PROBE_TIMEOUT_S)
        say(f"TensorRT {output} installed" if ok else f"TensorRT installed but does not import: {output[-300:]}")


def main() -> None:
    if install_skipped():
        return
    for module, requirement in BASE_REQUIREMENTS:
        if not module_present(module):
            pip_install(requirement)
    install_tensorrt()


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # an installer hook must never stop the WebUI from starting
        say(f"install step failed: {type(e).__name__}: {e}")
