"""WebUI entry point: registers the callbacks and the always-visible script; the work is done in
trt_unet_webui/ (WebUI glue) and trt_core/ (everything that does not need the WebUI)."""
import importlib.util
import logging
import sys
from pathlib import Path

# The extension is imported under one package name, `sd_unet_trt`, loaded from its folder by path:
# nothing is added to sys.path, so its `models`, `ui`, `scripts` and `trt_core` folders can never hide
# another package's modules (BLIP's `models`, say).
PACKAGE = "sd_unet_trt"
_root = Path(__file__).resolve().parents[1]
_loaded = sys.modules.get(PACKAGE)
if _loaded is None:
    _spec = importlib.util.spec_from_file_location(PACKAGE, _root / "__init__.py", submodule_search_locations=[str(_root)])
    _loaded = importlib.util.module_from_spec(_spec)
    sys.modules[PACKAGE] = _loaded
    _spec.loader.exec_module(_loaded)
elif Path(_loaded.__path__[0]).resolve() != _root:
    logging.getLogger("sd_unet_trt").warning(
        "TensorRT UNet: another copy of this extension is loaded from %s; %s is not used", _loaded.__path__[0], _root)

from modules import script_callbacks, scripts  # noqa: E402

from sd_unet_trt.scripts.trt_unet_webui import callbacks  # noqa: E402


class TrtUnetScript(scripts.Script):
    """Always visible, no controls: starts the generation's routing report (and warns when the
    engines will not cover it) before the UNet is applied, and ends it afterwards."""

    def title(self):
        return "TensorRT UNet"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def process(self, p, *args):
        callbacks.before_generation(p)

    def process_batch(self, p, *args, **kwargs):
        callbacks.before_pass(p, hires=False)

    def before_hr(self, p, *args):
        callbacks.before_pass(p, hires=True)

    def postprocess(self, p, processed, *args):
        callbacks.after_generation(p)


callbacks.choose_tensorrt_library()
callbacks.sweep_leftovers()
callbacks.snapshot_forward_names()
script_callbacks.on_list_unets(callbacks.list_unets)
script_callbacks.on_ui_tabs(callbacks.ui_tabs)
script_callbacks.on_ui_settings(callbacks.ui_settings)
script_callbacks.on_app_started(callbacks.app_started)
script_callbacks.on_model_loaded(callbacks.model_loaded)
script_callbacks.on_cfg_denoiser(callbacks.sampler_step)
script_callbacks.on_script_unloaded(callbacks.release)
