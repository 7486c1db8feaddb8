"""WebUI entry point: registers the callbacks and the always-visible script; the work is done in
trt_unet_webui/ (WebUI glue) and trt_core/ (everything that does not need the WebUI)."""
import sys
from pathlib import Path

# The WebUI puts the extension's folder on sys.path only while it loads this file and restores the
# old list afterwards, so the extension's top-level packages are imported now: their submodules
# (imported lazily later) are then found through the packages themselves.
_scripts_dir = str(Path(__file__).resolve().parent)
if _scripts_dir not in sys.path:
    sys.path.append(_scripts_dir)

import models  # noqa: E402,F401
import trt_core  # noqa: E402,F401
import trt_unet_webui  # noqa: E402,F401
import ui  # noqa: E402,F401
from modules import script_callbacks, scripts  # noqa: E402

from trt_unet_webui import callbacks  # noqa: E402


class TrtUnetScript(scripts.Script):
    """Always visible, no controls: starts the generation's routing report (and warns when the
    engines will not cover it) before the UNet is applied, and ends it afterwards."""

    def title(self):
        return "TensorRT UNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        callbacks.before_generation(p)

    def postprocess(self, p, processed, *args):
        callbacks.after_generation(p)


script_callbacks.on_list_unets(callbacks.list_unets)
script_callbacks.on_ui_tabs(callbacks.ui_tabs)
script_callbacks.on_ui_settings(callbacks.ui_settings)
script_callbacks.on_app_started(callbacks.app_started)
script_callbacks.on_model_loaded(callbacks.model_loaded)
script_callbacks.on_script_unloaded(callbacks.release)
