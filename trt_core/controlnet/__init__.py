"""Engines of the ControlNet models sd-webui-controlnet loads (issue 23): read a ControlNet file into
our model (models/controlnet.py), export, check, build and register its engines per profile, keyed
by the file's sha256, and serve its calls from them.

The interface the WebUI's bridge uses: `controlnet_file_sha256`, `load_controlnet`,
`build_controlnet_engine`, `controlnet_engines` (-> `ControlNetEngines.run` / `why_not`).

Its names are imported on first use (PEP 562): the catalog reads `family` for every listing, and
importing this package must not pull in the build pipeline, nor the catalog back in (a cycle).
"""
from importlib import import_module

_WHERE = {
    "ControlNetConfig": "sd_unet_trt.models.controlnet",
    "UnsupportedControlNet": "sd_unet_trt.models.controlnet",
    "build_controlnet_engine": f"{__name__}.build",
    "controlnet_build_problem": f"{__name__}.build",
    "ControlNetEngines": f"{__name__}.engines",
    "controlnet_engines": f"{__name__}.engines",
    "ControlNetFamily": f"{__name__}.family",
    "is_controlnet_entry": f"{__name__}.family",
    "controlnet_file_sha256": f"{__name__}.source",
    "load_controlnet": f"{__name__}.source",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name]), name)
