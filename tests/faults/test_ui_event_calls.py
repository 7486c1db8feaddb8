"""Event calls the standalone page could not have sent, over real HTTP and the queue's real
websocket to `python -m sd_unet_trt ui`: each is answered with one short line and 400/422, and
the server's log holds no traceback (Gradio alone answered 500 and logged one)."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from websockets.sync.client import connect

from tests.faults.helpers import REPO, stop
from tests.faults.test_inputs_and_ui import free_port, one_short_line, request

JSON = {"Content-Type": "application/json"}
# values of every JSON type, and the ones Gradio's pydantic body and float() trip over
STRANGE = ["abc", "512", True, {"a": 1}, [1], "x" * 10_000, -1, 1e308]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("event_calls")
    port, log_path = free_port(), base / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "sd_unet_trt", "ui", "--dir", str(base / "models"),
                                 "--port", str(port), "--device", "cpu"], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if request(port, "GET", "/config", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.5)
            config = json.loads(request(port, "GET", "/config")[1])
            yield port, log_path, config
        finally:
            stop(proc)


def kinds(config) -> list[list[str]]:
    """Each event's input components, by type, as the page's config lists them."""
    types = {c["id"]: c["type"] for c in config["components"]}
    return [[types[i] for i in dep["inputs"]] for dep in config["dependencies"]]


def fn_index_of(config, elem_id: str) -> int:
    ids = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id]
    return next(i for i, dep in enumerate(config["dependencies"]) if ids[0] in dep["targets"])


def assert_refused(status: int, body: bytes, what) -> str:
    assert status in (400, 422), (what, status, body[:300])
    line = json.loads(body)["error"]
    assert one_short_line(line), (what, body[:300])
    return line


def assert_no_traceback(log_path):
    time.sleep(0.3)  # what the server logs after answering
    log = log_path.read_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def test_the_issues_body_and_wrong_counts_get_one_line(server):
    port, log_path, config = server
    which = fn_index_of(config, "trt_which")
    cases = [({"fn_index": which, "data": ["512", "abc", None, True]}, "data[0] should be null or number"),
             ({"fn_index": which, "data": [512]}, "takes 4 values, got 1"),
             ({"fn_index": which, "data": [512, 512, 1, 75, 1]}, "takes 4 values, got 5"),
             ({"fn_index": len(config["dependencies"]), "data": []}, "fn_index is past the last event"),
             ({"fn_index": -1, "data": []}, "fn_index should be at least 0"),
             ({"data": []}, "lacks 'fn_index'"),
             ({"fn_index": which, "data": None}, "data should be array"),
             ({"fn_index": which, "data": [512, 512, 1, 75], "request": {"username": "x"}}, "may not name a user")]
    for body, words in cases:
        for path in ("/run/predict", "/api/predict"):
            line = assert_refused(*request(port, "POST", path, JSON, json.dumps(body).encode()), body)
            assert words in line, (body, line)
    assert_no_traceback(log_path)


@pytest.mark.parametrize("body", [b"\xff\xfe\x00\x81binary", b"\x89PNG\r\n\x1a\n\x00\x00", b'{"fn_index": 1, "data": ["\xff"]}',
                                  b"{not json", b"[1, 2]", b"null", b"[" * 100_000],
                         ids=["binary", "png", "bad utf-8", "not json", "a list", "null", "100000 deep"])
@pytest.mark.parametrize("content_type", ["application/json", "application/octet-stream", "text/plain", None])
def test_a_body_that_is_not_a_json_object_gets_400(server, body, content_type):
    port, log_path, _ = server
    headers = {"Content-Type": content_type} if content_type else {}
    for path in ("/run/predict", "/reset"):
        status, answer = request(port, "POST", path, headers, body)
        assert status == 400 and one_short_line(json.loads(answer)["error"]), (path, status, answer[:300])
    assert_no_traceback(log_path)


def test_every_input_of_every_event_takes_any_value_without_a_500(server):
    """Each input of each event in turn gets each strange value, the others their right type:
    the answer is the handler's own (200) or one line (422), never a 500."""
    port, log_path, config = server
    good = {"number": 64, "dropdown": None, "radio": None, "checkbox": False}
    export = fn_index_of(config, "trt_export")
    answers = set()
    for fn_index, inputs in enumerate(kinds(config)):
        if fn_index == export:
            continue  # a right-typed export call starts a build; its fields are the profile fields' too
        for position in range(len(inputs)):
            for value in STRANGE:
                data = [good[kind] for kind in inputs]
                data[position] = value
                status, body = request(port, "POST", "/run/predict", JSON,
                                       json.dumps({"fn_index": fn_index, "data": data}).encode())
                answers.add(status)
                if status != 200:
                    assert_refused(status, body, (fn_index, position, value))
    assert answers == {200, 422}, answers  # the strings and numbers a dropdown takes still reach its handler
    assert_no_traceback(log_path)


def test_the_queue_socket_answers_one_line_and_closes(server):
    port, log_path, config = server
    export = fn_index_of(config, "trt_export")

    def session(first: str | bytes, data: str | None = None) -> list[str]:
        seen = []
        with connect(f"ws://127.0.0.1:{port}/queue/join", origin=f"http://127.0.0.1:{port}",
                     open_timeout=10) as ws:
            seen.append(ws.recv(timeout=10))
            ws.send(first)
            while not seen[-1].startswith('{"msg": "process_completed"'):
                seen.append(ws.recv(timeout=10))
                if data is not None and "send_data" in seen[-1]:
                    ws.send(data)
        return seen

    joined = json.dumps({"session_hash": "s", "fn_index": export})
    for first, data, words in [
            (json.dumps({"session_hash": "s", "fn_index": 99}), None, "fn_index is past the last event"),
            (b"\xff\x00", None, "not JSON"),
            (json.dumps({"fn_index": export}), None, "lacks 'session_hash'"),
            (joined, json.dumps({"fn_index": export, "data": ["abc"], "session_hash": "s"}), "takes 16 values"),
            (joined, json.dumps({"fn_index": export, "data": ["abc"] + [64] * 11 + [None, None, False, None]}),
             "data[0] should be null or number")]:
        last = json.loads(session(first, data)[-1])
        assert last["success"] is False and words in last["output"]["error"], last
        assert one_short_line(last["output"]["error"])
    assert_no_traceback(log_path)


def test_uploads_are_refused(server):
    port, log_path, _ = server
    status, body = request(port, "POST", "/upload", {"Content-Type": "multipart/form-data; boundary=x"},
                           b'--x\r\nContent-Disposition: form-data; name="files"; filename="a.txt"\r\n\r\nhi\r\n--x--\r\n')
    assert status == 404 and one_short_line(json.loads(body)["error"]), (status, body[:300])
