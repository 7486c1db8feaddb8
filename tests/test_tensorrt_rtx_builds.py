"""Real TensorRT for RTX engines, built on this machine without a GPU through the product's own path
(export, ONNX check, build, engine file, manifest entry): the SD1-type, SDXL-type (with `y`) and
9-channel inpaint tiny models, static and dynamic profiles; a profile the real builder cannot run
is refused with its reason; and the CLI builds and lists an engine of the built-in model.

The builds run in a child process (tests/rtx/build_tiny_engines.py): Polygraphy serves one library
per process, and this one's serves the double. About a minute on 2 cores."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT for RTX is not installed (pip install -e '.[test]')")

REPO = Path(__file__).resolve().parents[1]
PORTABLE = ["sm_80", "sm_86", "sm_89", "sm_120", "sm_121"]
NO_GPU = "TensorRT for RTX 1.7.1.116 engines run on an NVIDIA GPU; this machine has none"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("rtx-builds")
    proc = subprocess.run([sys.executable, "-m", "tests.rtx.build_tiny_engines", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("case, family, inputs", [
    ("sd1-static", "tiny", {"x", "timesteps", "context"}),
    ("sd1-dynamic", "tiny", {"x", "timesteps", "context"}),
    ("sdxl-dynamic", "tiny-xl", {"x", "timesteps", "context", "y"}),
    ("inpaint-static", "tiny-inpaint", {"x", "timesteps", "context"}),
])
def test_a_real_portable_engine_is_built_and_registered(built, case, family, inputs):
    result = built[case]
    assert "error" not in result, result.get("trace")
    entry, header = result["entry"], result["header"]
    assert entry["family"] == family and entry["backend"] == "tensorrt" and entry["precision"] == "fp16"
    assert entry["backend_version"] == built["library"] and built["library"].startswith("tensorrt_rtx 1.")
    assert entry["gpu_arch"] == "portable" and entry["details"]["targets"] == PORTABLE
    assert entry["details"]["refittable"] is False  # refit needs a GPU at build time
    assert entry["details"]["unverified"] == NO_GPU and entry["accuracy"] == {}
    onnx = entry["details"]["onnx_accuracy"]  # the export it was built from was checked against PyTorch
    assert onnx["max_rel"] <= onnx["tolerance"]
    assert header["library"] == "tensorrt_rtx" and header["targets"] == PORTABLE and set(header["input_shapes"]) == inputs
    assert result["plan_bytes"] > 10 * 2**20  # a real plan: the tiny UNet's fp16 weights and kernels


def test_the_input_channels_of_each_family_reach_the_engine(built):
    assert built["inpaint-static"]["header"]["input_shapes"]["x"][0] == [1, 9, 8, 8]
    assert built["sdxl-dynamic"]["header"]["input_shapes"]["y"] == [[1, 2816], [2, 2816], [4, 2816]]
    assert built["sd1-dynamic"]["header"]["input_shapes"]["x"] == [[1, 4, 8, 8], [2, 4, 8, 12], [4, 4, 16, 16]]


def test_a_profile_the_real_builder_cannot_run_is_refused_with_its_reason(built):
    error = built["too-large"]["error"]
    assert error.startswith("EngineBuildError: TensorRT for RTX 1.7.1.116 cannot run every shape of this profile: "
                            "Profile kMAX values are not self-consistent")
    assert "tensor volume exceeds" in error and error.endswith("build a smaller profile (fewer images or pixels at "
                                                               "its top end)")


def test_the_catalog_keeps_them_and_says_why_they_do_not_run_here(built):
    states = {row[1] for row in built["catalog"]}
    assert len(built["catalog"]) == 4 and states == {"cannot-run"}
    assert {row[2] for row in built["catalog"]} == {NO_GPU}


def test_the_cli_builds_and_lists_a_real_engine_of_the_built_in_model(tmp_path):
    build = subprocess.run([sys.executable, "-m", "sd_unet_trt", "build", "--backend", "tensorrt", "--dir",
                            str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    assert re.search(r"^built \w+-tiny-tensorrt-fp16-\S+: [\d.]+ MiB in [\d.]+ s, not checked against PyTorch "
                     rf"\({re.escape(NO_GPU)}\)$", build.stdout, re.M), build.stdout
    assert "note: built without a GPU: not refittable" in build.stdout
    listing = subprocess.run([sys.executable, "-m", "sd_unet_trt", "list", "--dir", str(tmp_path)], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert listing.returncode == 0, listing.stderr[-3000:]
    assert re.search(r"^cannot-run +\w+-tiny-tensorrt-fp16-", listing.stdout, re.M), listing.stdout
    assert f"fp16 for portable ({', '.join(PORTABLE)})" in listing.stdout and NO_GPU in listing.stdout


def test_the_cli_builds_a_real_engine_of_a_controlnet_file(tmp_path):
    """Issue 23: a ControlNet's engine through the same builder; its plan takes the control image
    (`hint`, 8x the latent) besides the UNet's inputs, and the ONNX it came from was checked."""
    from safetensors.torch import save_file

    from sd_unet_trt.models.controlnet import TINY, seeded_controlnet
    from sd_unet_trt.trt_core.backends.tensorrt.plan_file import read_header

    model = seeded_controlnet(TINY, seed=4)
    path = tmp_path / "tiny_control.safetensors"
    save_file({f"control_model.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(path))
    build = subprocess.run([sys.executable, "-m", "sd_unet_trt", "build-controlnet", str(path), "--backend", "tensorrt",
                            "--height", "64:64:128", "--width", "64:96:128", "--dir", str(tmp_path / "ws")],
                           cwd=REPO, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr[-3000:]
    found = re.search(r"^built (\w+-controlnet-model-sd1-tensorrt-fp16-\S+): [\d.]+ MiB in [\d.]+ s, not checked "
                      rf"against PyTorch \({re.escape(NO_GPU)}\)$", build.stdout, re.M)
    assert found, build.stdout
    entry = json.loads((tmp_path / "ws" / "Unet-trt" / f"{found.group(1)}.trt.json").read_text())
    assert entry["details"]["onnx_accuracy"]["max_rel"] <= entry["details"]["onnx_accuracy"]["tolerance"]
    header, _ = read_header((tmp_path / "ws" / "Unet-trt" / entry["file"]).read_bytes()[:1 << 16])
    assert header.input_shapes["hint"] == [[1, 3, 64, 64], [2, 3, 64, 96], [4, 3, 128, 128]]
    assert set(header.input_shapes) == {"x", "hint", "timesteps", "context"} and header.targets == PORTABLE
