"""Oversized and malformed inputs at the edges (the tab, the standalone server, the WebUI API),
and what the standalone server lets other web pages do.

Each hostile input is sent for real: to the standalone server started as a user starts it, to the
tab's handlers as Gradio calls them, to the WebUI API routes over the WebUI double. Each must be
answered with one short message, quickly, without the process growing; the server must serve no
file and answer 403 to any request another web page's script could send it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import math
import resource
import socket
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.faults.helpers import stop
from tests.webui_double import harness
from tests.webui_double.harness import checkpoint_file, webui_unet
from modules import call_queue, errors, shared
from modules.api.api import Api
from sd_unet_trt.models import unet as arch
from sd_unet_trt.scripts.trt_unet_webui import api
from sd_unet_trt.trt_core import jobs
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.catalog import CatalogItem
from sd_unet_trt.trt_core.manifest import CheckpointId, EngineEntry, EngineStatus
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.workspace import Workspace
from sd_unet_trt.ui.engines import which_engine
from sd_unet_trt.ui.standalone import tiny_model, tiny_source
from sd_unet_trt.ui.tab import create_tab

REPO = Path(__file__).resolve().parents[2]
SERVER_MEMORY_CAP = 6 * 2**30  # address space of the server under test: a regression fails, never swaps the host
TINY_FIELDS = [1, 1, 2, 64, 64, 128, 64, 64, 128, 75, 75, 150]
ENTRY_FIELDS = {f.name for f in dataclasses.fields(EngineEntry)}  # the manifest's record grows (file digests)
ROUTER_PROFILE = Profile(Range(1, 1, 2), Range(64, 64, 128), Range(64, 64, 128), Range(75, 75, 150))


def one_short_line(text: str, limit: int = 300) -> bool:
    return bool(text) and "\n" not in text.strip() and len(text) < limit and "Traceback" not in text


# ---- the standalone server ------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the resident set's high-water mark
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def add_ready_engine(root: Path) -> None:
    """A manifest entry the catalog calls ready for the tiny model on the CPU, so that "Which
    engine?" goes all the way to the router (its file is never loaded: the question only plans)."""
    backend, content = OnnxRuntimeBackend(), b"onnx"
    checkpoint = tiny_model().checkpoint
    digest = {"file_sha256": hashlib.sha256(content).hexdigest()} if "file_sha256" in ENTRY_FIELDS else {}
    entry = EngineEntry(id="fault-ready", checkpoint=CheckpointId(checkpoint.sha256, checkpoint.short_hash,
                                                                  checkpoint.name, weights="a" * 64),
                        family="tiny", backend="onnxruntime", backend_version=backend.version(),
                        gpu_arch=backend.device_arch("cpu"), profile=ROUTER_PROFILE, precision="fp32",
                        file="fault-ready.onnx", file_size=len(content), **digest)
    manifest = Workspace(root).manifest()
    path = manifest.file_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    manifest.add(entry)


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None,
            timeout: float = 10) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, b"" if response.status == 101 else response.read()
    finally:
        conn.close()


EVIL = {"Origin": "http://evil.example"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`python -m sd_unet_trt ui` started from the repository folder, as a user starts it."""
    base = tmp_path_factory.mktemp("standalone")
    root = base / "models"
    add_ready_engine(root)
    (root / "notes.txt").write_text("a file in the --dir folder")
    port = free_port()
    log_path = base / "server.log"
    log = open(log_path, "w")

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (SERVER_MEMORY_CAP, SERVER_MEMORY_CAP))
    proc = subprocess.Popen([sys.executable, "-m", "sd_unet_trt", "ui", "--dir", str(root), "--port", str(port)],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, preexec_fn=cap_memory)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"the server exited with {proc.returncode}: {log_path.read_text()}"
            try:
                # the first answer the server gives at all, to another page's preflight, is a refusal
                first = request(port, "OPTIONS", "/run/predict", {**EVIL, "Access-Control-Request-Method": "POST"},
                                timeout=2)[0]
                assert first == 403, f"the starting server answered another origin's preflight with {first}"
                break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the server did not answer in 90 s: {log_path.read_text()}"
            time.sleep(0.5)
        yield port, root, proc
    finally:
        stop(proc)
        log.close()
    assert proc.poll() is not None


def test_the_server_serves_no_files(server):
    port, root, _ = server
    for path in ["README.md", "trt_core/cli.py", str(REPO / "trt_core" / "cli.py"), str(root / "notes.txt"),
                 str(root / "Unet-trt" / "manifest.json"), "/etc/passwd"]:
        for route in ("/file=", "/file/"):
            status, body = request(port, "GET", route + path)
            assert status in (403, 404), f"{route}{path} answered {status}"
            assert b"sd_unet_trt" not in body and b"a file in the --dir folder" not in body


PREDICT = json.dumps({"fn_index": 0, "data": [], "session_hash": "evil"}).encode()


def test_the_server_refuses_other_origins_on_every_route(server):
    port, _, _ = server
    attempts = [("GET", "/", None), ("GET", "/config", None), ("GET", "/info", None), ("GET", "/app_id", None),
                ("GET", "/file=README.md", None), ("GET", "/assets/index.html", None),
                ("POST", "/run/predict", PREDICT), ("POST", "/api/predict", PREDICT),
                ("POST", "/reset", b'{"session_hash": "x", "fn_index": 0}'), ("POST", "/upload", b"x"),
                ("GET", "/startup-events", None), ("GET", "/queue/status", None)]
    for origin in ("http://evil.example", f"http://127.0.0.1:{free_port()}", "null"):
        for method, path, body in attempts:
            headers = {"Origin": origin, "Content-Type": "application/json"}
            assert request(port, method, path, headers, body)[0] == 403, f"{origin} {method} {path}"
        preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"}
        assert request(port, "OPTIONS", "/run/predict", preflight)[0] == 403, f"{origin} preflight"
    # the queue's websocket: browsers let any page open one, with its Origin
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    assert request(port, "GET", "/queue/join", {**upgrade, **EVIL})[0] == 403
    assert request(port, "GET", "/queue/join", {**upgrade, "Origin": f"http://127.0.0.1:{port}"})[0] == 101
    # another site's page without an Origin header (an <img> or <script> tag): the browser says so
    assert request(port, "GET", "/config", {"Sec-Fetch-Site": "cross-site"})[0] == 403
    # a page at another name that resolves to 127.0.0.1 (DNS rebinding) sends its own Host
    assert request(port, "GET", "/config", {"Host": f"evil.example:{port}"})[0] == 403


def test_the_page_still_works_from_its_own_origin(server):
    port, _, _ = server
    for origin in (None, f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        headers = {"Origin": origin} if origin else {}
        status, page = request(port, "GET", "/", {**headers, "Sec-Fetch-Site": "same-origin" if origin else "none"})
        assert status == 200 and b"<html" in page.lower(), origin
        assert request(port, "GET", "/config", headers)[0] == 200, origin
    assert request(port, "GET", "/", {"Host": f"localhost:{port}"})[0] == 200


def which_fn_index(port: int) -> int:
    config = json.loads(request(port, "GET", "/config")[1])
    ids = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == "trt_which"]
    return next(i for i, dep in enumerate(config["dependencies"]) if ids[0] in dep["targets"])


@pytest.mark.parametrize("query, words", [
    ([64, 64, 1e9, 75], "batch"),
    ([1e308, 512, 1, 75], "width"),
    ([64, 9e15, 1, 75], "height"),
    ([64, 64, 1, 75e9], "tokens"),
])
def test_which_engine_on_the_server_refuses_huge_queries_at_once(server, query, words):
    port, _, proc = server
    fn_index = which_fn_index(port)
    assert "fault-ready" in request(port, "POST", "/run/predict", {"Content-Type": "application/json"}, json.dumps(
        {"fn_index": fn_index, "data": [64, 64, 1, 75], "session_hash": "s"}).encode())[1].decode()
    before = peak_rss_bytes(proc.pid)
    started = time.monotonic()
    status, body = request(port, "POST", "/run/predict", {"Content-Type": "application/json"}, json.dumps(
        {"fn_index": fn_index, "data": query, "session_hash": "s"}).encode(), timeout=120)
    elapsed = time.monotonic() - started
    grown = peak_rss_bytes(proc.pid) - before if proc.poll() is None else math.inf
    assert status == 200, body[:300]
    answer = json.loads(body)["data"][0]
    assert elapsed < 5 and grown < 100 * 2**20, (elapsed, grown, answer[:300])
    assert words in answer and "must lie within" in answer and one_short_line(answer), answer[:300]


def test_the_server_refuses_a_huge_request_body(server):
    port, _, _ = server
    body = json.dumps({"fn_index": 0, "data": ["x" * (4 * 2**20)], "session_hash": "s"}).encode()
    started = time.monotonic()
    status, answer = request(port, "POST", "/run/predict", {"Content-Type": "application/json"}, body)
    assert status == 413 and time.monotonic() - started < 5, (status, answer[:200])


# ---- the tab's handlers, as Gradio calls them -------------------------------------------------

def ready_item(profile: Profile) -> CatalogItem:
    entry = EngineEntry(id="e", checkpoint=CheckpointId.of("a" * 64, "model"), family="sd1", backend="tensorrt",
                        backend_version="10.3", gpu_arch="sm_89", profile=profile, precision="fp16", file="e.trt")
    return CatalogItem(entry, EngineStatus("ready"))


@pytest.fixture
def address_space_cap():
    """This process may grow by 2 GiB at most meanwhile: a regression raises MemoryError here
    instead of taking the host's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    used = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + 2 * 2**30, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.mark.parametrize("width, height, batch, tokens, words", [
    (512, 512, 10**9, 75, "batch must lie within 1-32"),
    (512, 512, 33, 75, "batch must lie within 1-32"),
    (10**9 * 8, 512, 1, 75, "width must lie within 64-4096"),
    (512, int(1e308) // 8 * 8, 1, 75, "height must lie within 64-4096"),
    (512, 512, 1, 75 * 10**9, "tokens must lie within 75-750"),
    (512, 512, 0, 75, "batch must be a positive multiple of 1"),
    (512, 512, -8, 75, "batch must be a positive multiple of 1"),
], ids=["batch 1e9", "batch 33", "width 8e9", "height 1e308", "tokens 75e9", "batch 0", "batch -8"])
def test_which_engine_refuses_out_of_range_queries_without_building_anything(address_space_cap, width, height,
                                                                             batch, tokens, words):
    items = [ready_item(Profile(Range(1, 1, 4), Range(512, 512, 768), Range(512, 512, 768), Range(75, 75, 150)))]
    tracemalloc.start()
    started = time.monotonic()
    try:
        answer = which_engine(items, width, height, batch, tokens)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert answer.startswith(words) and one_short_line(answer, 120), answer[:300]
    assert elapsed < 1 and peak < 2**20, (elapsed, peak)


def handler(tab, elem_id: str, event: str):
    ids = [block_id for block_id, block in tab.blocks.items() if getattr(block, "elem_id", None) == elem_id]
    return next(fn.fn for dep, fn in zip(tab.dependencies, tab.fns) if dep["trigger"] == event and ids[0] in dep["targets"])


SHORT_HTML = 500  # a message's text stays under about 300 characters; its box's markup adds about 140


def text_of(update) -> str:
    return str(update.get("value", "")) if isinstance(update, dict) else str(update)


@pytest.mark.parametrize("query, words", [
    ((512, 512, 1e9, 75), "batch must lie within 1-32"),
    ((1e308, 512, 1, 75), "width must lie within 64-4096"),
    ((512, float("inf"), 1, 75), "height must be a positive multiple of 8"),
    ((512, 512, float("nan"), 75), "batch must be a positive multiple of 1"),
    ((512, 512, 1, None), "tokens must be a positive multiple of 75"),
])
def test_the_which_button_answers_one_line(tmp_path, address_space_cap, query, words):
    tab = create_tab(tiny_source(tmp_path, "cpu"))
    started = time.monotonic()
    answer = text_of(handler(tab, "trt_which", "click")(*query))
    assert words in answer and "see the log" not in answer and len(answer) < SHORT_HTML, answer[:300]
    assert time.monotonic() - started < 2


def test_the_profile_fields_answer_short_messages_for_huge_and_strange_values(tmp_path):
    tab = create_tab(tiny_source(tmp_path, "cpu"))
    on_input = handler(tab, "trt_batch_max", "input")
    huge = list(TINY_FIELDS)
    huge[2], huge[5], huge[8], huge[11] = 1e308, 1e300, -1e300, 9e15 * 75
    shown = [text_of(v) for v in on_input(*huge, "onnxruntime", "fp32")]
    assert all(len(s) < SHORT_HTML for s in shown) and all(shown[:4]), shown
    for backend, precision, words in [("onnxruntime", "int4", "precision"), ("onnxruntime", "fp8", "torch and TensorRT"),
                                      ("x" * 100_000, "fp32", "backend"),
                                      (["onnxruntime"], "fp32", "backend"), ("onnxruntime", {"a": 1}, "precision")]:
        out = [text_of(v) for v in on_input(*TINY_FIELDS, backend, precision)]
        assert words in out[4] and "see the log" not in out[4] and len(out[4]) < SHORT_HTML, out[4][:300]
    steps = list(handler(tab, "trt_export", "click")(*huge, "onnxruntime", "fp32", False, "None"))
    assert len(steps) == 1 and "fix the profile first" in steps[0][0] and len(steps[0][0]) < 1000
    assert jobs.current() is None


def test_the_engine_choice_and_the_preset_take_huge_values(tmp_path):
    tab = create_tab(tiny_source(tmp_path, "cpu"))
    for engine_id in ("x" * 1_000_000, ["a", "b"], {"id": 1}):
        note = text_of(handler(tab, "trt_delete", "click")(engine_id)[2])
        assert note and len(note) < SHORT_HTML and "see the log" not in note, note[:300]
        outputs = handler(tab, "trt_confirm_delete", "click")(engine_id)
        assert len(text_of(outputs[3])) < SHORT_HTML and "see the log" not in text_of(outputs[3])
    out = handler(tab, "trt_preset", "select")("x" * 1_000_000, "onnxruntime", "fp32")
    assert out[:12] == TINY_FIELDS and sum(len(text_of(v)) for v in out) < 2000


# ---- the WebUI API ----------------------------------------------------------------------------

@pytest.fixture
def client(tmp_path, monkeypatch):
    """The routes over the WebUI double; a build they start waits (until cancelled) instead of building."""
    def waiting_build(*args, cancel=None, **kwargs):
        while not cancel.cancelled:
            time.sleep(0.02)
        raise RuntimeError("cancelled by the test")

    source = arch.seeded_unet(arch.TINY, seed=4)
    harness.reset(tmp_path)
    harness.load_extension()
    harness.load(webui_unet(source), checkpoint_file(tmp_path, "tiny", source))
    shared.cmd_opts.api_auth = None
    monkeypatch.setattr(api, "build_engine", waiting_build)
    app = FastAPI()
    Api(app, call_queue.queue_lock)
    api.register(app)
    yield TestClient(app, raise_server_exceptions=False)
    running = jobs.current()
    if running is not None:
        jobs.cancel(running.id)
        while jobs.status(running.id).active:
            time.sleep(0.02)
    harness.stop()
    errors.reported.clear()


def profile_json(batch="[1, 1, 2]", px="[64, 64, 128]", tokens="[75, 75, 150]") -> str:
    def rng(text):
        lo, opt, hi = (part.strip() for part in text.strip("[]").split(",", 2))
        return f'{{"min": {lo}, "opt": {opt}, "max": {hi}}}'
    return f'{{"batch": {rng(batch)}, "height": {rng(px)}, "width": {rng(px)}, "tokens": {rng(tokens)}}}'


DEEP_PROFILE = '{"profile": ' + '{"batch": ' * 10_000 + "1" + "}" * 10_001
HOSTILE_BODIES = {
    "batch of a billion": '{"backend": "onnxruntime", "profile": %s}' % profile_json(batch="[1, 1, 1000000000]"),
    "a 4000-digit width": '{"profile": %s}' % profile_json(px="[64, 64, 1%s]" % ("0" * 4000)),
    "a 5000-digit width": '{"profile": %s}' % profile_json(px="[64, 64, 1%s]" % ("0" * 5000)),
    "Infinity": '{"profile": %s}' % profile_json(px="[64, 64, Infinity]"),
    "NaN": '{"profile": %s}' % profile_json(px="[64, NaN, 128]"),
    "a fraction": '{"profile": %s}' % profile_json(px="[64, 64.5, 128]"),
    "true for a number": '{"profile": %s}' % profile_json(batch="[true, true, true]"),
    "lists and objects for numbers": '{"profile": %s}' % profile_json().replace(
        '"min": 1, "opt": 1, "max": 2', '"min": [1], "opt": {"a": 1}, "max": "two"'),
    "a missing key": '{"profile": {"batch": {"min": 1}}}',
    "a missing dimension": '{"profile": {"batch": {"min": 1, "opt": 1, "max": 1}}}',
    "a profile that is text": '{"profile": "%s"}' % ("x" * 60_000),
    "a profile that is a list": '{"profile": [%s]}' % ", ".join(["1"] * 10_000),
    "a profile that is null": '{"profile": null}',
    "a profile nested 10000 deep": DEEP_PROFILE,
    "a list nested 10000 deep": '{"profile": ' + "[" * 10_000 + "]" * 10_000 + "}",
    "a list nested 900 deep": '{"profile": ' + "[" * 900 + "]" * 900 + "}",
    "a preset nested 900 deep": '{"preset": ' + "[" * 900 + "]" * 900 + "}",
    "a 60 kB preset name": '{"preset": "%s"}' % ("p" * 60_000),
    "a 1 MB preset name": '{"preset": "%s"}' % ("p" * 1_000_000),
    "a preset that is a number": '{"preset": 7}',
    "a 60 kB backend": '{"backend": "%s"}' % ("b" * 60_000),
    "a backend that is a list": '{"backend": ["tensorrt"]}',
    "a 60 kB precision": '{"backend": "onnxruntime", "precision": "%s"}' % ("f" * 60_000),
    "a precision that is a number": '{"backend": "onnxruntime", "precision": 16}',
    "a profile and a preset": '{"backend": "onnxruntime", "preset": "x", "profile": %s}' % profile_json(),
    "an unknown field": '{"backend": "onnxruntime", "precision": "fp32", "profiel": %s}' % profile_json(),
    "a list body": "[" + ", ".join(["0"] * 200_000) + "]",
    "a text body": '"%s"' % ("t" * 60_000),
    "a number body": "1e999",
    "a null body": "null",
    "not JSON": "{not json",
    "a 4 MB body": '{"backend": "onnxruntime", "pad": "%s"}' % ("z" * (4 * 2**20)),
}


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_the_build_route_answers_400_with_a_short_detail(client, name):
    started = time.monotonic()
    answer = client.post("/trt-unet/v1/builds", content=HOSTILE_BODIES[name],
                         headers={"Content-Type": "application/json"})
    elapsed = time.monotonic() - started
    assert answer.status_code in (400, 422), (answer.status_code, answer.text[:300])
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and one_short_line(detail), answer.text[:300]
    assert elapsed < 5 and jobs.current() is None, elapsed


def test_a_good_body_still_starts_a_build(client):
    answer = client.post("/trt-unet/v1/builds", content='{"backend": "onnxruntime", "precision": "fp32", '
                                                        '"profile": %s}' % profile_json(px='[64, 64.0, "128"]'))
    assert answer.status_code == 202 and answer.json()["checkpoint"] == "tiny", answer.text
    assert jobs.current().id == answer.json()["job_id"]
    assert client.post("/trt-unet/v1/builds", json={"preset": "Static 64x64, batch 1"}).status_code == 409


def test_ids_in_the_path_are_not_echoed_whole(client):
    long_id = "j" * 8000
    for method, path in [("get", f"/trt-unet/v1/builds/{long_id}"), ("delete", f"/trt-unet/v1/builds/{long_id}"),
                         ("delete", f"/trt-unet/v1/engines/{long_id}")]:
        answer = getattr(client, method)(path)
        assert answer.status_code == 404 and one_short_line(answer.json()["detail"]), answer.text[:300]
