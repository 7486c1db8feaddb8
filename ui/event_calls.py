"""The standalone server's check of every event call before Gradio sees it.

Gradio 3.41 answers a call it cannot take (a string in a number field, too few values, an fn_index
past its list, a body that is not JSON) with a 500 and a traceback in the log, or with a list of
pydantic errors. `EventCallCheck` answers such a call itself: one short line, 400 for a body that is
not a JSON object, 422 for one that does not fit the page. Each input's values come from the
component's own `api_info()` (a JSON schema: "number", "string", "boolean", ...), so the check
follows the page as it is built; null is taken everywhere, as the page sends it for an empty field.
"""
from __future__ import annotations

import json
import logging

import jsonschema
from starlette.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

log = logging.getLogger(__name__)

PREDICT_PREFIXES = ("/run/", "/api/")  # /run/predict, /api/predict (the queue's own hop), /api/NAME
RESET_PATHS = ("/reset", "/reset/")
UPLOAD_PATHS = ("/upload", "/upload/")
QUEUE_PATH = "/queue/join"
OPTIONAL_TEXT = {"type": ["string", "null"]}


def input_schema(component) -> dict:
    """What one input takes, from the component; anything where it states no usable schema."""
    try:
        info = component.api_info()["info"]
        jsonschema.Draft7Validator.check_schema(info)
    except Exception:  # noqa: BLE001 - a component without a usable schema (gr.State says {"type": {}})
        return {}
    return {"anyOf": [{"type": "null"}, info]}


def call_schema(dependencies: list[dict], blocks: dict) -> dict:
    """One JSON schema for every body /run/predict takes: the fields Gradio reads, then per
    fn_index the data it must carry."""
    per_event = [{"if": {"properties": {"fn_index": {"const": index}}},
                  "then": {"properties": {"data": {"type": "array", "minItems": len(dep["inputs"]),
                                                   "maxItems": len(dep["inputs"]),
                                                   "items": [input_schema(blocks[i]) for i in dep["inputs"]]}}}}
                 for index, dep in enumerate(dependencies)]
    return {"type": "object", "required": ["fn_index", "data"],
            "properties": {"fn_index": {"type": "integer", "minimum": 0, "maximum": len(dependencies) - 1},
                           "data": {"type": "array"}, "session_hash": OPTIONAL_TEXT, "event_id": OPTIONAL_TEXT,
                           "batched": {"type": "boolean"},
                           # the queue passes the caller's headers on; Gradio adds the user name itself
                           "request": {"type": ["object", "null"], "not": {"required": ["username"]}}},
            "allOf": per_event}


def reset_schema(dependencies: list[dict]) -> dict:
    return {"type": "object", "required": ["session_hash", "fn_index"],
            "properties": {"session_hash": {"type": "string"},
                           "fn_index": {"type": "integer", "minimum": 0, "maximum": len(dependencies) - 1}}}


def session_schema(dependencies: list[dict]) -> dict:
    """The queue's first websocket message: which event the session joins for."""
    return reset_schema(dependencies)


# Each failed schema keyword as the user reads it ("type" and "anyOf" name the types instead).
EXPECTED = {"maximum": "is past the last event", "minimum": "should be at least 0", "not": "may not name a user"}


def types_of(schema: dict) -> list[str]:
    named = schema.get("type", [])
    return ([named] if isinstance(named, str) else list(named)) + [
        t for branch in schema.get("anyOf", []) for t in types_of(branch)]


def where(error: jsonschema.ValidationError) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"body{path}"


def place(error: jsonschema.ValidationError) -> tuple:
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in error.absolute_path)


def problem(body: bytes | str, schema: dict) -> tuple[int, str] | None:
    """(status, one line) for a body that the page cannot take; None for one it can."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return 400, "the body is not JSON"
    if not isinstance(value, dict):
        return 400, "the body must be a JSON object"
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(value))
    if not errors:
        return None
    error = min(errors, key=place)  # the first field that is wrong, as the page lists them
    if error.validator in ("minItems", "maxItems") and list(error.absolute_path) == ["data"]:
        wanted = error.validator_value
        return 422, f"this event takes {wanted} value{'s' if wanted != 1 else ''}, got {len(error.instance)}"
    if error.validator == "required":
        return 422, f"{where(error)} lacks {error.message.split(' ')[0]}"
    if error.validator in ("type", "anyOf"):
        expected = f"should be {' or '.join(types_of(error.schema))}"
    else:
        expected = EXPECTED.get(error.validator, "is not accepted")
    return 422, f"{where(error)} {expected}, got {json.dumps(error.instance)[:40]}"


class EventCallCheck:
    """ASGI middleware: event calls, resets and the queue's websocket messages that the page could not
    have sent are answered here in one line, before Gradio parses them; uploads are refused (the
    page has no file input). `blocks` is the Gradio Blocks being served."""

    def __init__(self, app, blocks):
        self.app = app
        self.calls = call_schema(blocks.dependencies, blocks.blocks)
        self.resets = reset_schema(blocks.dependencies)
        self.sessions = session_schema(blocks.dependencies)

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] == "websocket" and path == QUEUE_PATH:
            socket = QueueSocket(self, receive, send)
            try:
                return await self.app(scope, socket.next_message, socket.pass_on)
            except WebSocketDisconnect:
                if not socket.refused:  # Gradio's join_queue lets the disconnect that the check caused out
                    raise
                return
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        if path in UPLOAD_PATHS:
            return await JSONResponse({"error": "this page takes no uploads"}, 404)(scope, receive, send)
        schema = self.resets if path in RESET_PATHS else self.calls if path.startswith(PREDICT_PREFIXES) else None
        if schema is None:
            return await self.app(scope, receive, send)
        body, more, messages = b"", True, []
        while more:  # SameOriginOnly has bounded the length already
            message = await receive()
            if message["type"] != "http.request":
                return
            messages.append(message)
            body += message.get("body", b"")
            more = message.get("more_body", False)
        refused = problem(body, schema)
        if refused is not None:
            status, line = refused
            log.warning("refused an event call: %s", line)
            return await JSONResponse({"error": line}, status)(scope, receive, send)

        async def replay():
            return messages.pop(0) if messages else await receive()
        return await self.app(scope, replay, send)

class QueueSocket:
    """One websocket of the queue, its messages checked: the first says which event, later ones carry
    its values. A message the page could not have sent gets one line back and closes the socket;
    Gradio sees the client leave, as when a tab is closed, and what it sends after that is dropped."""

    def __init__(self, check: EventCallCheck, receive, send):
        self.check, self.receive, self.send = check, receive, send
        self.seen, self.closed, self.refused = 0, False, False

    async def next_message(self):
        message = await self.receive()
        if message["type"] != "websocket.receive":
            return message
        text = message["text"] if message.get("text") is not None else message.get("bytes") or b""
        refused = problem(text, self.check.sessions if self.seen == 0 else self.check.calls)
        self.seen += 1
        if refused is None:
            return message
        log.warning("refused a queue message: %s", refused[1])
        self.refused = True
        await self.pass_on({"type": "websocket.send", "text": json.dumps(
            {"msg": "process_completed", "output": {"error": refused[1]}, "success": False})})
        await self.pass_on({"type": "websocket.close", "code": 1008})
        return {"type": "websocket.disconnect", "code": 1008, "reason": refused[1]}

    async def pass_on(self, message):
        if self.closed:
            return
        self.closed = message["type"] == "websocket.close"
        await self.send(message)
