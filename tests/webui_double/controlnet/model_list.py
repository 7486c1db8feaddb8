"""sd-webui-controlnet's model list and model cache as the WebUI holds them (v1.1.455): its main
script is loaded by modules.script_loading (not in sys.modules); that module imports
`scripts.global_state`, whose `cn_models` maps each listed name ("name [short hash]") to its file,
"None" first; `Script.model_cache` (an OrderedDict) holds what `load_control_model` built, by name,
as ControlModel(model, type)."""
from __future__ import annotations

import types
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

from modules import script_loading

SCRIPT_PATH = "/extensions/sd-webui-controlnet/scripts/controlnet.py"


class ControlModel(NamedTuple):
    model: object
    type: object


def install(files: dict[str, Path]) -> types.ModuleType:
    """ControlNet's script module, listing `files` (name -> path); its Script.model_cache empty."""
    global_state = types.SimpleNamespace(cn_models=OrderedDict([("None", None)] + [(n, str(p)) for n, p in files.items()]))
    module = types.ModuleType("controlnet.py")
    module.global_state = global_state
    module.Script = type("Script", (), {"model_cache": OrderedDict()})
    script_loading.loaded_scripts[SCRIPT_PATH] = module
    return module


def uninstall() -> None:
    script_loading.loaded_scripts.pop(SCRIPT_PATH, None)
