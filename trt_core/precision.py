"""The precisions an engine can be built in: the one table every other list of them derives from
(the form's and the CLI's choices, the manifest schema, the export, the backends, the estimate,
the accuracy bands). A new precision is one row here; a backend that cannot build it says so in its
own `precision_problem`."""
from __future__ import annotations

from dataclasses import dataclass

import torch

OPSET = 17  # the ONNX opset of every export unless its precision needs a newer one


@dataclass(frozen=True)
class Precision:
    name: str  # as users, the manifest and engine ids write it
    label: str  # as messages write it
    dtype: torch.dtype  # of a weight held in this precision
    quantized: bool  # INT8/FP8: scaled low-bit weights, calibrated or per-row scales
    # what an ONNX export without Q/DQ nodes holds for a build in this precision (pipeline.onnx_weights)
    onnx_weights: str
    tolerance: float  # one call's norm-wise relative error against PyTorch (verify.py, METHOD.md's bands)
    # quantized: the worst final-latent relative error over a whole denoising loop (quality.py;
    # docs/BENCHMARKS.md "The quality gate" has the measurements)
    loop_tolerance: float | None = None
    # the oldest GPU whose tensor cores run the format (TensorRT refuses FP8 below Ada: "the model
    # contains HW-specific datatypes: fp8_e4m3"); None: any
    min_capability: tuple[int, int] | None = None
    onnx_opset: int = OPSET  # of its export; FP8 Q/DQ needs 19 (float8 types)
    modelopt_config: str | None = None  # Model Optimizer's recipe for its Q/DQ export (quantize.py)

    @property
    def bytes_per_weight(self) -> int:
        return self.dtype.itemsize

    @property
    def trace_dtype(self) -> torch.dtype:
        """The dtype its ONNX export traces the UNet in: quantized exports compute in fp32 between
        their Q/DQ pairs."""
        return torch.float32 if self.quantized else self.dtype


_TABLE = (
    Precision("fp16", "FP16", torch.float16, False, "fp16", tolerance=1e-2),
    Precision("bf16", "BF16", torch.bfloat16, False, "fp16", tolerance=3e-2),
    Precision("fp32", "FP32", torch.float32, False, "fp32", tolerance=1e-3),
    # one call of a quantized engine: a sanity bound; its gate is the denoising loop
    Precision("int8", "INT8", torch.int8, True, "fp16", tolerance=0.15, loop_tolerance=0.20,
              min_capability=(7, 5), modelopt_config="INT8_DEFAULT_CFG"),
    Precision("fp8", "FP8", torch.float8_e4m3fn, True, "fp16", tolerance=0.3, loop_tolerance=0.40,
              min_capability=(8, 9), onnx_opset=19, modelopt_config="FP8_DEFAULT_CFG"),
)
PRECISIONS: dict[str, Precision] = {p.name: p for p in _TABLE}
NAMES: tuple[str, ...] = tuple(PRECISIONS)  # in the order the form and the CLI offer them
QUANTIZED: tuple[str, ...] = tuple(p.name for p in _TABLE if p.quantized)
FLOAT: tuple[str, ...] = tuple(p.name for p in _TABLE if not p.quantized)
# what an ONNX export can hold: the plain weights exports, and Q/DQ nodes of each quantized precision
EXPORT_WEIGHTS: tuple[str, ...] = tuple(dict.fromkeys([p.onnx_weights for p in _TABLE] + list(QUANTIZED)))
