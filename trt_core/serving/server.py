"""Starting and stopping a Triton Inference Server on this machine: the `tritonserver` that the
`nvidia-pytriton` wheel carries (CPU and GPU, Python backend), bound to 127.0.0.1.

The wheel keeps the Python backend's stubs per Python version apart from the backend; a backend
folder is assembled beside the repository with links to the backend and to the stub of this
interpreter's version. The stub embeds the system's libpython of that version without any
site-packages, yet Triton's backend utilities import numpy before the model can add this package's
paths (the stub ignores PYTHONPATH): the backend folder, which is on the stub's path, also links
this interpreter's numpy, and only numpy, so nothing shadows the stub's standard library."""
from __future__ import annotations

import importlib.metadata
import json
import importlib.util
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


class ServerError(RuntimeError):
    pass


def server_home() -> Path:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ServerError("Triton Inference Server is not installed (pip install --no-deps nvidia-pytriton)")
    return Path(list(spec.submodule_search_locations)[0]) / "tritonserver"


def numpy_version() -> str:
    return importlib.metadata.version("numpy")


def backend_directory(into: Path) -> Path:
    """A backend folder whose python/ holds links to the backend, this Python version's stub and
    this interpreter's numpy (with the libraries its wheel bundles)."""
    home = server_home()
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    stub = home / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ServerError(f"the Triton wheel has no Python backend stub for Python {version}")
    numpy = importlib.util.find_spec("numpy")
    if numpy is None or not numpy.submodule_search_locations:
        raise ServerError("numpy is not installed beside this package")
    if int(numpy_version().split(".")[0]) >= 2:  # seen: every output tensor arrives empty
        raise ServerError(f"the Python backend of nvidia-pytriton 0.7.0 needs numpy < 2 in the serving Python "
                          f"(this one has {numpy_version()}): pip install 'numpy<2'")
    numpy_package = Path(list(numpy.submodule_search_locations)[0])
    python = Path(into) / "python"
    python.mkdir(parents=True, exist_ok=True)
    for source in (home / "backends" / "python" / "libtriton_python.so",
                   home / "backends" / "python" / "triton_python_backend_utils.py", stub,
                   numpy_package, numpy_package.parent / "numpy.libs"):
        link = python / source.name
        if link.is_symlink() or link.exists():
            link.unlink()
        if source.exists():
            link.symlink_to(source)
    return Path(into)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def start(repository: Path, workdir: Path, http_port: int, grpc_port: int, log: Path,
          timeout_s: float = 120) -> subprocess.Popen:
    """A server over `repository`, on 127.0.0.1; returns once it is ready (its models loaded)."""
    backends = backend_directory(Path(workdir) / "backends")
    command = [str(server_home() / "bin" / "tritonserver"), f"--model-repository={repository}",
               f"--backend-directory={backends}", "--http-address=127.0.0.1", f"--http-port={http_port}",
               "--grpc-address=127.0.0.1", f"--grpc-port={grpc_port}", "--allow-metrics=false",
               "--exit-timeout-secs=10"]
    process = subprocess.Popen(command, stdout=open(log, "w"), stderr=subprocess.STDOUT, cwd=workdir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if ready(f"127.0.0.1:{http_port}"):
            return process
        if process.poll() is not None:
            raise ServerError(f"tritonserver exited with {process.returncode}: {last_error(log)}")
        time.sleep(0.5)
    process.kill()
    raise ServerError(f"tritonserver was not ready after {timeout_s:.0f} s; see {log}")


def last_error(log: Path) -> str:
    """The log's last error line (Triton prefixes them with E), else its last line: the reason."""
    lines = [line.strip() for line in Path(log).read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E")]
    return (errors or lines or ["(empty log)"])[-1][:400] + f" (log: {log})"


def statistics(url: str, model: str) -> dict:
    """The server's statistics of `model` (inference_count counts rows, execution_count batches run,
    batch_stats per batch size): Triton's /v2/models/<model>/stats."""
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=10) as answer:
        return json.loads(answer.read())["model_stats"][0]


def stop(process: subprocess.Popen, timeout_s: float = 30) -> int:
    """SIGTERM, and its exit code once it has stopped (killed after `timeout_s`)."""
    process.terminate()
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
