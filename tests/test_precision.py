"""Every list of precisions derives from trt_core/precision.py: a precision added to its table (an
fp4 row, in a fresh interpreter) appears in every other table, with the facts of its row, and each
backend decides for itself whether it builds it."""
import json
import subprocess
import sys
from pathlib import Path

import torch

from sd_unet_trt.trt_core import manifest_schema
from sd_unet_trt.trt_core.precision import EXPORT_WEIGHTS, NAMES, PRECISIONS, QUANTIZED

REPO = Path(__file__).resolve().parents[1]

# Loads this checkout as sd_unet_trt (as the WebUI does, by path), with one more row in precision.py's
# table, then reads every table that lists precisions.
WITH_FP4 = r'''
import importlib.util, json, sys, types
from pathlib import Path

root = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("sd_unet_trt", root / "__init__.py", submodule_search_locations=[str(root)])
package = importlib.util.module_from_spec(spec)
sys.modules["sd_unet_trt"] = package
spec.loader.exec_module(package)
import sd_unet_trt.trt_core

source = (root / "trt_core" / "precision.py").read_text()
last_row = "\n)\nPRECISIONS"
assert source.count(last_row) == 1, "precision.py's table no longer ends as this test expects"
source = source.replace(last_row, '\n    Precision("fp4", "FP4", torch.float4_e2m1fn_x2, True, "fp16", tolerance=0.5, loop_tolerance=0.6,'
                        ' min_capability=(10, 0), onnx_opset=23, modelopt_config="NVFP4_DEFAULT_CFG"),' + last_row)
precision = types.ModuleType("sd_unet_trt.trt_core.precision")
precision.__file__ = str(root / "trt_core" / "precision.py")
sys.modules[precision.__name__] = precision
exec(compile(source, precision.__file__, "exec"), precision.__dict__)

from sd_unet_trt.trt_core import estimate, manifest_schema, pipeline, quality, quantize, verify
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.backends.tensorrt import backend as trt_backend, builder as trt_builder
from sd_unet_trt.trt_core.backends.torch_compiled.backend import TorchCompiledBackend
from sd_unet_trt.trt_core.cli.parser import parser
from sd_unet_trt.ui import form

commands = next(a for a in parser()._actions if a.dest == "command").choices
build = next(a for a in commands["build"]._actions if a.dest == "precision")
print(json.dumps({
    "schema": manifest_schema.ENTRY["properties"]["precision"]["enum"],
    "form": list(form.PRECISIONS),
    "form_note": form.PRECISION_NOTES.get("fp4", ""),
    "cli": list(build.choices),
    "bytes": estimate.BYTES.get("fp4"),
    "tolerance": verify.TOLERANCE.get("fp4"),
    "loop_tolerance": quality.LOOP_TOLERANCE.get("fp4"),
    "capability": quantize.capability_problem("fp4", (9, 0)),
    "onnx_weights": [pipeline.onnx_weights("fp4", True), pipeline.onnx_weights("fp4", False)],
    "tensorrt": list(trt_backend.PRECISIONS),
    "tensorrt_onnx_type": trt_builder.ONNX_TYPES.get("fp4"),
    "onnxruntime": OnnxRuntimeBackend().precision_problem("fp4"),
    "torch": TorchCompiledBackend().precision_problem("fp4"),
}))
'''


def test_a_precision_added_to_its_table_reaches_every_other_table():
    proc = subprocess.run([sys.executable, "-c", WITH_FP4, str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    names = [*NAMES, "fp4"]
    assert seen["schema"] == seen["form"] == seen["cli"] == names
    assert seen["form_note"].startswith("FP4: held to a whole 20-step denoising loop")
    assert seen["bytes"] == 1 and seen["tolerance"] == 0.5 and seen["loop_tolerance"] == 0.6
    assert seen["capability"] == "fp4 engines need a GPU of compute capability 10.0 or newer (this one is 9.0)"
    assert seen["onnx_weights"] == ["fp4", "fp16"]  # Q/DQ nodes for TensorRT, fp16 for a backend that quantizes itself
    assert seen["tensorrt"] == [*EXPORT_WEIGHTS, "fp4"] and seen["tensorrt_onnx_type"] == "FLOAT"
    assert seen["onnxruntime"] == "fp4 engines are built by the torch and TensorRT backends"
    # the torch backend's kernels take int8 and fp8 only: a new quantized format is refused there
    assert seen["torch"].startswith("unknown precision 'fp4'")


def test_the_table_today():
    assert NAMES == ("fp16", "bf16", "fp32", "int8", "fp8") and QUANTIZED == ("int8", "fp8")
    assert manifest_schema.ENTRY["properties"]["precision"]["enum"] == list(NAMES)
    assert {n: p.bytes_per_weight for n, p in PRECISIONS.items()} == {"fp16": 2, "bf16": 2, "fp32": 4, "int8": 1, "fp8": 1}
    assert PRECISIONS["fp8"].trace_dtype == torch.float32 and PRECISIONS["bf16"].trace_dtype == torch.bfloat16
    assert set(EXPORT_WEIGHTS) == {"fp16", "fp32", "int8", "fp8"}  # no bf16 export is made


def test_a_backend_refuses_a_precision_the_table_does_not_know():
    from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend

    # ONNX Runtime states no precision rules of its own: before, any name passed its check and the
    # build failed after the export, on a KeyError
    assert OnnxRuntimeBackend().precision_problem("fp64") == "unknown precision 'fp64' (known: fp16, bf16, fp32, int8, fp8)"
    assert OnnxRuntimeBackend().precision_problem("bf16") is None
