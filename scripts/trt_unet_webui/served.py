"""The engines of the Triton server the settings name (issue 14, docs/SERVING.md): read into a
checkpoint's router ahead of its local engines; while the server does not answer, local engines
serve, the infotext says why, and the server is asked again at the next sampling pass."""
from __future__ import annotations

import sys

from sd_unet_trt.scripts.trt_unet_webui import settings
from sd_unet_trt.trt_core.hook_policy import checkpoint_records
from sd_unet_trt.trt_core.router import EngineRecord
from sd_unet_trt.trt_core.serving.remote import remote_records
from sd_unet_trt.trt_core.serving.repository import model_name

PROBE_TIMEOUT_S = 5.0  # asking for the model's config holds the sampling pass: briefly


def served_records(sha256: str) -> tuple[list[EngineRecord], str]:
    """The checkpoint's engines on the server, or none and why ("" when no server is set)."""
    url = settings.triton_url()
    if not url:
        return [], ""
    try:
        return remote_records(url, model_name(sha256), probe_timeout_s=PROBE_TIMEOUT_S), ""
    except ImportError:
        return [], f"the Triton server setting needs tritonclient ({sys.executable} -m pip install 'tritonclient[http]')"
    except Exception as e:  # down, or not serving this checkpoint
        return [], f"Triton server {url} does not serve this checkpoint's engines ({type(e).__name__}: {str(e)[:160]})"


def served_first(records: list[EngineRecord], sha256: str) -> tuple[list[EngineRecord], str]:
    """`records` (a router's local ones) with the server's engines ahead of them
    (hook_policy.checkpoint_records), and why there are none of the server's ("" when there are,
    or no server is set)."""
    served, problem = served_records(sha256)
    records, mismatch = checkpoint_records(records, served)
    return records, problem or mismatch
