"""A real Triton Inference Server for the tests (the nvidia-pytriton wheel's tritonserver) on
127.0.0.1, and the skip marker for machines without one (CI installs it: there it is a failure)."""
from __future__ import annotations

import ctypes.util
import os
import sys

import pytest

from sd_unet_trt.trt_core.serving import server


def server_problem() -> str:
    try:
        server.server_home()
    except server.ServerError as e:
        return str(e)
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if ctypes.util.find_library(f"python{version}") is None:  # what the backend's stub embeds
        return f"the system has no libpython{version} (apt-get install libpython{version})"
    return ""


PROBLEM = server_problem()
needs_server = pytest.mark.skipif(bool(PROBLEM) and not os.environ.get("CI"), reason=PROBLEM)


def start(repository, workdir):
    """(process, "127.0.0.1:port") of a server over `repository`, ready."""
    port = server.free_port()
    process = server.start(repository, workdir, port, server.free_port(), workdir / "triton.log")
    return process, f"127.0.0.1:{port}"
