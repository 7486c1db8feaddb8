"""INT8 and FP8 exports of the tiny SD1 model (Model Optimizer's Q/DQ), built into real TensorRT for
RTX engines on this machine, GPU or not; FP8 once more for Ampere alone, which the real builder must
refuse. Writes what came out as JSON: `python -m tests.rtx.build_quantized_engines OUT_DIR`."""
from __future__ import annotations

import collections
import json
import sys
import time
from pathlib import Path

import onnx

from sd_unet_trt.models.families import TINY
from sd_unet_trt.models.unet import seeded_unet
from sd_unet_trt.trt_core.backends.base import BuildRequest
from sd_unet_trt.trt_core.backends.tensorrt import TensorRTBackend
from sd_unet_trt.trt_core.backends.tensorrt.builder import BuildSettings, build_plan
from sd_unet_trt.trt_core.backends.tensorrt.logger import make_logger
from sd_unet_trt.trt_core.backends.tensorrt.plan_file import read_header
from sd_unet_trt.trt_core.export import export_onnx
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.progress import CancelToken, no_progress

PROFILE = Profile.static(1, 64, 64)


def main(out: Path) -> None:
    unet = seeded_unet(TINY.unet_config()).eval()
    backend = TensorRTBackend()
    results = {"library": backend.version()}
    for precision in ("int8", "fp8"):
        started = time.monotonic()
        exported = export_onnx(unet, TINY, out / f"export-{precision}", weights=precision)
        ops = collections.Counter(node.op_type for node in onnx.load(str(exported.onnx_path)).graph.node)
        case = {"export_seconds": round(time.monotonic() - started, 1), "onnx": str(exported.onnx_path),
                "record_dtype": exported.record.details.get("dtype"), "weights": len(exported.record.fingerprints),
                "quantize_ops": {op: n for op, n in ops.items() if "uantize" in op}}
        path = out / f"tiny-{precision}.trt"
        started = time.monotonic()
        try:
            outcome = backend.build(BuildRequest(exported.onnx_path, TINY, PROFILE, precision, device="cpu"), path)
        except Exception as e:
            case["error"] = f"{type(e).__name__}: {e}"
        else:
            header, offset = read_header(path.read_bytes()[:1 << 16])
            case.update(build_seconds=round(time.monotonic() - started, 1), details=outcome.details,
                        header_precision=header.precision, plan_bytes=path.stat().st_size - offset)
        results[precision] = case
    library = backend.library
    request = BuildRequest(Path(results["fp8"]["onnx"]), TINY, PROFILE, "fp8", device="cpu")
    try:
        build_plan(library, make_logger(library.module, without_gpu=True), request,
                   BuildSettings(None, refittable=False, compute_capabilities=((8, 6),)), None, no_progress,
                   CancelToken())
        results["fp8-ampere"] = {"error": ""}
    except Exception as e:
        results["fp8-ampere"] = {"error": f"{type(e).__name__}: {e}"}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
