"""Engines served by a real Triton Inference Server (issue 14): the `tritonserver` of the
nvidia-pytriton wheel on 127.0.0.1, over a repository `export-triton` wrote for a tiny ONNX Runtime
engine. Concurrent requests through the remote engine equal the local router's, the server's
statistics show its dynamic batcher merging them, a slow, stopped or killed server gives the caller
a fallback within its timeout, and the server stops cleanly."""
from __future__ import annotations

import re
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

from sd_unet_trt.models.families import family_named
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.catalog import router_for_checkpoint
from sd_unet_trt.trt_core.cli.commands import tiny_model
from sd_unet_trt.trt_core.identity import checkpoint_of_module
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.router import EngineRecord, Router
from sd_unet_trt.trt_core.serving import server
from sd_unet_trt.trt_core.serving.remote import TritonEngine, remote_records
from sd_unet_trt.trt_core.serving.repository import export_triton, model_name
from sd_unet_trt.trt_core.unet_source import ModuleUNet
from sd_unet_trt.trt_core.workspace import Workspace
from tests.triton_server import PROBLEM, needs_server, start

TINY = family_named("tiny")
PROFILE = Profile(Range(1, 1, 2), Range(64, 64, 96), Range(64, 64, 96), Range(75, 75, 150))


pytestmark = needs_server


@pytest.fixture(scope="module")
def built(tiny_unet, tmp_path_factory):
    assert not PROBLEM, PROBLEM
    workspace = Workspace(tmp_path_factory.mktemp("ws"))
    checkpoint = checkpoint_of_module(tiny_unet, "tiny")
    build_engine(ModuleUNet(tiny_unet, checkpoint, TINY), PROFILE, OnnxRuntimeBackend(), workspace,
                 precision="fp32", device="cpu")
    return workspace, checkpoint.sha256


@pytest.fixture(scope="module")
def served(built, tmp_path_factory):
    workspace, sha = built
    repository = tmp_path_factory.mktemp("repo")
    export_triton(workspace, sha, repository, "cpu")
    process, url = start(repository, tmp_path_factory.mktemp("server"))
    yield process, url, model_name(sha)
    if process.poll() is None:
        server.stop(process)


def test_export_writes_a_versioned_repository(built, tmp_path):
    workspace, sha = built
    folder = export_triton(workspace, sha, tmp_path, "cpu")
    config = (folder / "config.pbtxt").read_text()
    assert f'name: "{model_name(sha)}"' in config and 'backend: "python"' in config
    assert "max_batch_size: 4" in config and "preferred_batch_size: [ 2 ]" in config  # rows: 2 x batch
    assert '{ name: "context" data_type: TYPE_FP32 dims: [ -1, 768 ] }' in config
    assert "latest: { num_versions: 1 }" in config
    again = export_triton(workspace, sha, tmp_path, "cpu")
    assert again == folder and sorted(p.name for p in folder.iterdir()) == ["1", "2", "config.pbtxt"]
    assert (folder / "2" / "model.py").read_text() == (folder / "1" / "model.py").read_text()


def test_concurrent_requests_equal_the_local_router_and_are_batched(built, served):
    workspace, sha = built
    _, url, model = served
    remote = Router(remote_records(url, model, timeout_s=30))
    local, _ = router_for_checkpoint(workspace, sha, "cpu")
    results = {}

    def call(i):
        g = torch.Generator().manual_seed(i)
        size = 8 if i % 2 else 12  # two shapes: the batcher merges only equal ones
        x, c = torch.randn(1, 4, size, size, generator=g), torch.randn(1, 77, 768, generator=g)
        t = torch.tensor([100.0 * i])
        results[i] = (remote.run(x, t, c), local.run(x, t, c))

    threads = [threading.Thread(target=call, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    remote.close()
    for i, (far, near) in results.items():
        assert far.covered, far.reason
        assert far.engine.startswith(f"[triton {model}]")
        assert torch.allclose(far.output, near.output, atol=1e-5), i
    stats = server.statistics(url, model)
    assert stats["inference_count"] >= 12 and stats["execution_count"] < stats["inference_count"], stats
    assert any(b["batch_size"] > 1 for b in stats["batch_stats"]), stats["batch_stats"]


def test_an_uncovered_call_never_reaches_the_server(served):
    _, url, model = served
    remote = Router(remote_records(url, model))
    result = remote.run(torch.randn(2, 4, 17, 17), torch.tensor([1.0, 2.0]), torch.randn(2, 77, 768))
    assert not result.covered and "136x136 px is outside" in result.reason


def test_a_slow_server_gives_a_fallback_at_its_timeout():
    """A server that accepts and never answers: the call ends at the timeout, the engine stays."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    url = f"127.0.0.1:{listener.getsockname()[1]}"
    router = Router([EngineRecord("slow", TINY, PROFILE, lambda: TritonEngine(url, "m", TINY, PROFILE, timeout_s=1.0))])
    started = time.monotonic()
    result = router.run(torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), torch.randn(2, 77, 768))
    elapsed = time.monotonic() - started
    listener.close()
    assert not result.covered and "did not answer" in result.reason, result.reason
    assert elapsed < 5 and not router.failed  # the next call tries the server again


def test_stopped_and_killed_servers_give_fallbacks_and_a_stop_is_clean(built, tmp_path):
    workspace, sha = built
    repository = tmp_path / "repo"
    export_triton(workspace, sha, repository, "cpu")
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([1.0, 2.0]), torch.randn(2, 77, 768)
    for how in ("stop", "kill"):
        process, url = start(repository, tmp_path)
        remote = Router(remote_records(url, model_name(sha)))
        assert remote.run(x, t, c).covered
        if how == "stop":
            remote.close()  # the server waits for its clients' open connections
            started = time.monotonic()
            assert server.stop(process) == 0 and time.monotonic() - started < 10
        else:
            process.kill()
            process.wait()
        started = time.monotonic()
        result = remote.run(x, t, c)
        assert not result.covered and "did not answer" in result.reason, result.reason
        assert time.monotonic() - started < 5 and not remote.failed
        local, _ = router_for_checkpoint(workspace, sha, "cpu")
        both = Router(remote.records + local.records)
        result = both.run(x, t, c)  # the server first, then a local engine for this call
        assert result.covered and not result.engine.startswith("[triton"), result.reason
        assert result.passed_over == (remote.records[0].label,)
        both.close()


def test_the_demo_samples_through_the_server(tmp_path):
    """The CLI demo's --triton row: the tiny model's sampling through a server serving its engine."""
    source = tiny_model()
    workspace = Workspace(tmp_path / "ws")
    build_engine(source, PROFILE, OnnxRuntimeBackend(), workspace, precision="fp32", device="cpu")
    export_triton(workspace, source.checkpoint.sha256, tmp_path / "repo", "cpu")
    process, url = start(tmp_path / "repo", tmp_path)
    try:
        demo = subprocess.run([sys.executable, "-m", "sd_unet_trt", "demo", "--backends", "onnxruntime", "--steps", "2",
                               "--device", "cpu", "--dir", str(tmp_path / "ws"), "--triton", url],
                              capture_output=True, text=True, timeout=600)
    finally:
        server.stop(process)
    assert demo.returncode == 0, demo.stderr[-2000:]
    row = re.search(rf"^triton {re.escape(url)}\s+-\s+([\d.]+)\s+([\d.e+-]+)\s+model sd_unet_", demo.stdout, re.M)
    assert row and float(row.group(2)) < 1e-3, demo.stdout


def test_a_python_with_numpy_2_is_refused_before_the_server_starts(tmp_path, monkeypatch):
    """The wheel's Python backend sends every output tensor empty under numpy 2 (seen with 2.4.6):
    the server is not started there, and the message says what to install."""
    monkeypatch.setattr(server, "numpy_version", lambda: "2.4.6")
    with pytest.raises(server.ServerError, match=r"needs numpy < 2 .* has 2\.4\.6\): pip install 'numpy<2'"):
        server.start(tmp_path / "repo", tmp_path, server.free_port(), server.free_port(), tmp_path / "log")
