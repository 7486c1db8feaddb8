"""Every operator in our exported UNet graphs is one the ONNX-TensorRT parser of TensorRT 10 supports.

The table (tests/data/onnx_tensorrt_operators_trt10.tsv) is onnx-tensorrt's docs/operators.md of the
10.1-GA release, with its source and date in its header. SD2.x and SDXL are exported at reduced width
(32 base channels, one transformer block per level, 8-channel heads): the same block types, so the same
operator types as the full models, at a size a CPU exports in seconds. SD1.x is the tiny UNet's
topology (SD1.x blocks at 32 channels), exported by the pipeline's own export with fp16 weights; the
SDXL refiner uses SDXL's block types.
"""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import onnx
import pytest
import torch

from sd_unet_trt.models import unet as arch
from sd_unet_trt.models.families import FAMILIES, TINY
from sd_unet_trt.models.unet import UNetModel
from sd_unet_trt.trt_core.export import dynamic_axes, export_onnx, sample_inputs
from sd_unet_trt.trt_core.precision import OPSET

TABLE = Path(__file__).parent / "data" / "onnx_tensorrt_operators_trt10.tsv"
REDUCED = {
    "sd2": dataclasses.replace(arch.SD2, model_channels=32, num_head_channels=8),
    "sdxl": dataclasses.replace(arch.SDXL, model_channels=32, transformer_depth=(0, 1, 1),
                                transformer_depth_middle=1, num_head_channels=8),
}


def supported() -> dict[str, str]:
    lines = [line for line in TABLE.read_text().splitlines() if line and not line.startswith("#")]
    rows = [line.split("\t") for line in lines[1:]]
    return {r[0]: r[3] for r in rows if r[1].startswith("Y")}


def export_reduced(name: str, folder: Path) -> onnx.ModelProto:
    family = dataclasses.replace(FAMILIES[name], base_config=REDUCED[name])
    torch.manual_seed(0)
    model = UNetModel(family.unet_config()).eval()
    args = sample_inputs(family, 2, 8, 8, 77, torch.float32, "cpu")
    path = folder / f"{name}.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(family.input_names), output_names=["out"],
                          dynamic_axes=dynamic_axes(family), do_constant_folding=True)
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def graphs(tmp_path_factory, tiny_unet_fp16_onnx) -> dict[str, onnx.ModelProto]:
    folder = tmp_path_factory.mktemp("op-graphs")
    out = {name: export_reduced(name, folder) for name in REDUCED}
    out["sd1 / tiny (pipeline export, fp16 weights)"] = onnx.load(str(tiny_unet_fp16_onnx))
    return out


@pytest.fixture(scope="module")
def tiny_unet_fp16_onnx(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-fp16")
    return export_onnx(arch_seeded(), TINY, folder / "onnx", weights="fp16").onnx_path


def arch_seeded():
    return arch.seeded_unet(TINY.unet_config(), seed=1)


def test_table_is_the_tensorrt_10_table():
    head = TABLE.read_text().splitlines()[:3]
    assert "onnx/onnx-tensorrt" in head[1] and "96e781103cfc4adf4a6bb557e94bac8e693f6f4c" in head[1]
    assert {"GroupNormalization", "LayerNormalization", "Gelu"} <= set(supported())  # new in the 10.x table
    assert "SplitToSequence" not in supported()


def test_every_operator_of_every_graph_is_supported(graphs):
    table = supported()
    for name, model in graphs.items():
        ops = {n.op_type for n in model.graph.node}
        assert {"Conv", "MatMul", "Softmax", "Resize"} <= ops, name
        assert not ops - set(table), f"{name}: unsupported by TensorRT 10's ONNX parser: {sorted(ops - set(table))}"


def test_resize_uses_modes_the_parser_supports(graphs):
    for name, model in graphs.items():
        for node in (n for n in model.graph.node if n.op_type == "Resize"):
            attrs = {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING}
            assert attrs.get("mode", "nearest") in ("nearest", "linear"), name
            assert attrs.get("coordinate_transformation_mode", "half_pixel") in (
                "half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"), name
            assert attrs.get("nearest_mode", "round_prefer_floor") in (
                "floor", "ceil", "round_prefer_floor", "round_prefer_ceil"), name
