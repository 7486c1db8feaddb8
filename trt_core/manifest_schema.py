"""What a manifest entry may hold, as a JSON Schema (checked with the `jsonschema` library, which the
WebUI's environment has through Gradio), and a bound on nesting for the free-form parts."""
from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator

from sd_unet_trt.trt_core.precision import NAMES

MAX_DEPTH = 16  # entries are 3-4 levels deep; a hostile file may nest thousands
_RANGE = {"type": "object", "required": ["min", "opt", "max"], "additionalProperties": False,
          "properties": {k: {"type": "integer", "minimum": 0, "maximum": 1 << 20} for k in ("min", "opt", "max")}}
_HEX64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_TEXT = {"type": "string", "maxLength": 4096}
# A plain name inside the engine folder, never the index, a sidecar or a hidden file.
FILE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$"
ENTRY = {
    "type": "object",
    "required": ["id", "checkpoint", "family", "backend", "backend_version", "gpu_arch", "profile", "precision", "file"],
    "properties": {
        "id": {"type": "string", "pattern": FILE_NAME},
        "checkpoint": {"type": "object", "required": ["sha256", "short_hash", "name"], "additionalProperties": False,
                       "properties": {"sha256": _HEX64, "short_hash": {"type": "string", "pattern": "^[0-9a-f]{10}$"},
                                      "name": _TEXT, "weights": {"type": "string", "pattern": "^([0-9a-f]{64})?$"}}},
        "family": _TEXT, "backend": _TEXT, "backend_version": _TEXT, "gpu_arch": _TEXT,
        "profile": {"type": "object", "required": ["batch", "height", "width", "tokens"], "additionalProperties": False,
                    "properties": {k: _RANGE for k in ("batch", "height", "width", "tokens")}},
        "precision": {"enum": list(NAMES)},
        "file": {"type": "string", "pattern": FILE_NAME, "not": {"pattern": r"(^manifest\.json$|\.json$)"}},
        "file_size": {"type": "integer", "minimum": 0},
        "file_sha256": {"type": "string", "pattern": "^([0-9a-f]{64})?$"},
        "build_seconds": {"type": "number", "minimum": 0},
        "created": _TEXT,
        "accuracy": {"type": "object", "additionalProperties": {"type": "number"}},
        "details": {"type": "object"},
    },
    "additionalProperties": False,
}
_VALIDATOR = Draft202012Validator(ENTRY)


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deep lists and objects nest in `value`, counting no further than limit + 1."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            if level <= limit:
                stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def entry_problem(data: Any) -> str:
    """Why `data` is not a valid entry, in one line; "" when it is."""
    if depth(data) > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    error = next(iter(sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(e.path))), None)
    if error is None:
        return ""
    where = "/".join(str(p) for p in error.absolute_path) or "the entry"
    if where == "file" and isinstance(error.instance, str):
        return (f"file: must be a plain file name inside the engine folder (not the index, not a .json), "
                f"got {error.instance[:120]!r}")
    message = error.message if len(error.message) < 200 else error.message[:200] + "..."
    return f"{where}: {message}"
