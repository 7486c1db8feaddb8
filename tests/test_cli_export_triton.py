"""`export-triton` without --checkpoint serves the workspace's only checkpoint with engines, and
lists the choices in one line when there are several (found when tried as a new user would,
issue 21)."""
from __future__ import annotations

import pytest

from sd_unet_trt.trt_core.cli.commands import checkpoint_to_serve
from sd_unet_trt.trt_core.cli.errors import CliError
from sd_unet_trt.trt_core.manifest import CheckpointId, Manifest
from sd_unet_trt.trt_core.serving.repository import model_name
from tests.faults.helpers import cli, killed_build, one_line_error

A = CheckpointId.of("a1" * 32, "anime.safetensors")
B = CheckpointId.of("b2" * 32, "photo.safetensors")


def test_the_only_checkpoint_is_the_default():
    assert checkpoint_to_serve([A, A], None, "ws/Unet-trt") == A.sha256


def test_several_checkpoints_are_listed_in_one_line():
    with pytest.raises(CliError) as refused:
        checkpoint_to_serve([B, A, B], None, "ws/Unet-trt")
    line = str(refused.value)
    assert line == ("2 checkpoints have engines in ws/Unet-trt; name one with --checkpoint: "
                    f"{A.short_hash} (anime.safetensors), {B.short_hash} (photo.safetensors)")


def test_none_says_to_build_first():
    with pytest.raises(CliError, match="no checkpoint has engines in ws/Unet-trt; build one first"):
        checkpoint_to_serve([], None, "ws/Unet-trt")


def test_a_prefix_still_picks_one():
    assert checkpoint_to_serve([A, B], "b2b2", "ws/Unet-trt") == B.sha256
    with pytest.raises(CliError, match="0 checkpoints with engines in ws/Unet-trt match 'cc'"):
        checkpoint_to_serve([A, B], "cc", "ws/Unet-trt")


def test_export_triton_without_checkpoint_serves_the_only_one(tmp_path):
    assert killed_build("none", tmp_path).returncode == 0  # one real engine: tiny model, ONNX Runtime
    (entry,) = Manifest(tmp_path / "Unet-trt").entries()
    proc = cli("export-triton", "--out", tmp_path / "repo", "--dir", tmp_path, "--device", "cpu")
    assert proc.returncode == 0 and "(version 1)" in proc.stdout, proc.stderr[-2000:]
    assert (tmp_path / "repo" / model_name(entry.checkpoint.sha256) / "config.pbtxt").is_file()
