"""A checkpoint whose UNet weights hold NaN or Inf (issue 18 item 5), through the real CLI: `build`
and `export` say in one line that the weights are not finite, before exporting, and leave no
export (before, the export was written whole, the ONNX check then failed "by inf", and the 41 MB
export stayed in Unet-onnx/)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from safetensors.torch import save_file

from sd_unet_trt.models.families import TINY
from sd_unet_trt.models.unet import seeded_unet
from tests.faults.helpers import cli, leftovers, one_line_error

BAD_TENSOR = "input_blocks.1.0.in_layers.2.weight"


def checkpoint_with(path: Path, value: float) -> Path:
    """The tiny UNet as a WebUI-style checkpoint file, one weight of BAD_TENSOR set to `value`."""
    state = seeded_unet(TINY.unet_config(), 0).state_dict()
    state[BAD_TENSOR].view(-1)[7] = value
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in state.items()}, str(path))
    return path


def workspace_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("command", [["build", "--backend", "onnxruntime", "--precision", "fp32", "--preset", "1"],
                                     ["export", "--weights", "fp32"]])
def test_weights_that_are_not_finite_are_named_before_exporting_and_nothing_is_kept(tmp_path, value, command):
    checkpoint = checkpoint_with(tmp_path / "broken.safetensors", value)
    root = tmp_path / "ws"
    proc = cli(*command, "--checkpoint", checkpoint, "--dir", root)
    assert proc.returncode == 2, proc.stdout[-2000:]
    line = one_line_error(proc)
    assert line.startswith("error: ") and "the checkpoint's UNet weights are not finite: 1 of " in line, line
    assert BAD_TENSOR in line
    assert "differs" not in proc.stderr and "export: tracing" not in proc.stderr  # refused before exporting
    assert workspace_files(root) == [] and leftovers(root) == []


def test_weights_beyond_fp16s_range_are_named_with_the_way_out(tmp_path):
    checkpoint = checkpoint_with(tmp_path / "large.safetensors", 1e6)  # finite in fp32, inf in fp16
    root = tmp_path / "ws"
    proc = cli("export", "--checkpoint", checkpoint, "--weights", "fp16", "--dir", root)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert line.startswith("error: the UNet's weights are not finite in fp16: 1 tensors hold values beyond its range")
    assert BAD_TENSOR in line and line.endswith("export them with fp32 weights")
    assert workspace_files(root) == [] and leftovers(root) == []
