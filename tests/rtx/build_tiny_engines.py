"""Build real TensorRT for RTX engines of the tiny models through the product's own path (export,
ONNX check, build, engine file, manifest entry) on this machine, GPU or not, and write what came
out as JSON: `python -m tests.rtx.build_tiny_engines OUT_DIR`."""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

from sd_unet_trt.models.families import TINY, TINY_INPAINT, TINY_XL
from sd_unet_trt.models.unet import seeded_unet
from sd_unet_trt.trt_core.backends.base import BuildRequest
from sd_unet_trt.trt_core.backends.tensorrt import TensorRTBackend
from sd_unet_trt.trt_core.backends.tensorrt.plan_file import read_header
from sd_unet_trt.trt_core.catalog import catalog
from sd_unet_trt.trt_core.identity import checkpoint_of_module
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.unet_source import ModuleUNet
from sd_unet_trt.trt_core.workspace import Workspace

DYNAMIC = Profile(Range(1, 1, 2), Range(64, 64, 128), Range(64, 96, 128), Range(75, 75, 150))
CASES = {
    "sd1-static": (TINY, Profile.static(1, 64, 64)),
    "sd1-dynamic": (TINY, DYNAMIC),
    "sdxl-dynamic": (TINY_XL, DYNAMIC),
    "inpaint-static": (TINY_INPAINT, Profile.static(1, 64, 64)),
}
# Its attention scores at 4096 px and 4 rows exceed TensorRT's tensor volume limit. Built straight
# from the SD1 export: the pipeline's ONNX check would run the CPU at 4096 px first.
TOO_LARGE = Profile(Range(1, 1, 2), Range(64, 64, 4096), Range(64, 64, 4096), Range(75, 75, 75))


def source(family):
    unet = seeded_unet(family.unet_config()).eval()
    return ModuleUNet(unet, checkpoint_of_module(unet, f"{family.name}-test"), family)


def main(out: Path) -> None:
    results = {}
    workspace = Workspace(out / "models")
    backend = TensorRTBackend()
    for name, (family, profile) in CASES.items():
        started = time.monotonic()
        try:
            entry = build_engine(source(family), profile, backend, workspace, precision="fp16", device="cpu")
        except Exception as e:
            results[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
            continue
        path = workspace.manifest().file_path(entry)
        header, offset = read_header(path.read_bytes()[:1 << 16])
        results[name] = {"entry": entry.to_dict(), "header": header.__dict__, "plan_bytes": path.stat().st_size - offset,
                         "seconds": round(time.monotonic() - started, 1)}
    onnx_path = workspace.root / results["sd1-static"]["entry"]["details"]["onnx"]
    try:
        backend.build(BuildRequest(onnx_path, TINY, TOO_LARGE, "fp16"), out / "too-large.trt")
        results["too-large"] = {"error": ""}
    except Exception as e:
        results["too-large"] = {"error": f"{type(e).__name__}: {e}"}
    results["catalog"] = [[item.entry.id, item.status.state, item.status.reason] for item in catalog(workspace, "cuda")]
    results["library"] = backend.version()
    (out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
