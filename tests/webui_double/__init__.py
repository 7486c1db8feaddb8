"""A strict test double of the AUTOMATIC1111 WebUI v1.10.1 modules the extension touches.

CI cannot run the WebUI, so `modules/` here re-implements, from the v1.10.1 source, exactly what
scripts/trt_unet_webui uses: sd_unet (copied), script_callbacks, options/shared.opts,
shared_state, devices, sd_hijack (the patched ldm/sgm UNet forwards), lowvram, paths_internal,
call_queue/fifo_lock (a non-reentrant lock like FIFOLock), hashes, sd_models, scripts and a
processing loop that calls the UNet the way docs/DESIGN.md's call table says, in the real order
process -> apply_unet -> process_batch -> sample -> postprocess. Strictness: names, signatures
and defaults are the real ones (tests/real_webui/check_double_against_webui.py compares them with
a WebUI checkout; tests/test_webui_double_fidelity.py runs it when WEBUI_DIR is set), what a module
adds on purpose is listed in its DOUBLE_ONLY, unknown option names raise like the real Options,
and every exception a callback or script raises is recorded (the real WebUI logs and carries on)
so tests can require none.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def install() -> None:
    """Make `import modules.*` and the Lora extension's `import networks` find this double (the
    extension itself is imported as `sd_unet_trt`, like scripts/trt_unet.py loads it in the WebUI)."""
    # `modules`, and the built-in Lora and Hypertile extensions' folders (their modules are
    # top-level, like there)
    for path in (str(HERE / "lora"), str(HERE / "hypertile"), str(HERE)):
        if path not in sys.path:
            sys.path.insert(0, path)
    loaded = sys.modules.get("modules")
    if loaded is not None and not str(getattr(loaded, "__file__", "")).startswith(str(HERE)):
        raise RuntimeError(f"another `modules` package is imported: {loaded!r}")
