"""Where install.py put the export tools (onnx, onnx-graphsurgeon; they need a newer protobuf than
the WebUI pins): `.export-tools/<cache tag>-<platform>/` in the extension's folder, with the record
`installed.json`. Only the export's child process puts that folder on its path
(export_process.child_environment). install.py runs before this package can be imported, so it
spells these names itself; tests/test_install.py holds the two together."""
from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import sd_unet_trt

EXTENSION_ROOT = Path(sd_unet_trt.__path__[0])  # install.py's folder
FOLDER_NAME, RECORD_NAME = ".export-tools", "installed.json"


def export_tools_folder() -> Path:
    """The folder install.py uses for this Python, whether it is there or not."""
    return EXTENSION_ROOT / FOLDER_NAME / f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"


def export_tools_path() -> Path | None:
    """install.py's folder of export tools for this Python, when it installed one for it."""
    folder = export_tools_folder()
    try:
        record = json.loads((folder / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return folder if isinstance(record, dict) and record.get("python") == sys.version else None
