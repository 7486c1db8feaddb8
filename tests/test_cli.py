import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


TENSORRT_MODULES = ("tensorrt", "tensorrt_bindings", "tensorrt_rtx", "tensorrt_rtx_bindings")


def cli(*args, timeout=600, env=None):
    return subprocess.run([sys.executable, "-m", "sd_unet_trt", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def without_tensorrt(tmp_path) -> dict:
    """An environment in which no TensorRT library imports (whatever this machine has installed)."""
    blockers = tmp_path / "no-tensorrt"
    blockers.mkdir()
    for module in TENSORRT_MODULES:
        (blockers / f"{module}.py").write_text("raise ImportError('not installed (test)')\n")
    return {**os.environ, "PYTHONPATH": str(blockers)}


def test_demo_denoises_through_the_router_and_matches_pytorch(tmp_path):
    proc = cli("demo", "--steps", "3", "--device", "cpu", "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = re.search(r"^onnxruntime\s+([\d.]+)\s+([\d.]+)\s+([\d.e+-]+)\s*$", proc.stdout, re.M)
    assert row, proc.stdout
    assert float(row.group(3)) < 1e-3  # fp32 ONNX vs PyTorch over a whole denoising loop
    # TensorRT for RTX (installed with the test extra) builds a real engine here, which no GPU runs
    assert re.search(r"^tensorrt\s+[\d.]+\s+-\s+-\s+built; not run: TensorRT for RTX [\d.]+ engines run on an NVIDIA "
                     r"GPU; this machine has none$", proc.stdout, re.M), proc.stdout
    listing = cli("list", "--dir", str(tmp_path), "--device", "cpu")
    assert re.search(r"^ready\s+\w+-tiny-onnxruntime-fp32-", listing.stdout, re.M), listing.stdout


def test_build_with_missing_tensorrt_says_so(tmp_path):
    proc = cli("build", "--backend", "tensorrt", "--dir", str(tmp_path), env=without_tensorrt(tmp_path))
    assert proc.returncode == 2 and "TensorRT for RTX is not installed (pip install" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_profile_and_bad_manifest_are_one_line_errors(tmp_path):
    proc = cli("build", "--backend", "onnxruntime", "--profile", "1:1:2,65:64:64,64:64:64,75:75:75", "--dir", str(tmp_path))
    assert proc.returncode == 2 and "height: needs min <= opt <= max" in proc.stderr
    (tmp_path / "Unet-trt").mkdir()
    (tmp_path / "Unet-trt" / "manifest.json").write_text("{oops")
    proc = cli("list", "--dir", str(tmp_path))
    assert proc.returncode == 2 and "is corrupt" in proc.stderr and "Traceback" not in proc.stderr
    proc = cli("recover", "--dir", str(tmp_path))
    assert proc.returncode == 0 and "rebuilt with 0 engines" in proc.stdout
    assert cli("list", "--dir", str(tmp_path)).returncode == 0


def test_build_with_controlnet_inputs_by_the_real_tensorrt_rtx_builder(tmp_path):
    """The export with ControlNet's 13 residual inputs and T2I-Adapter's 4 feature inputs parses and
    builds in TensorRT for RTX's real builder (the ONNX Runtime check against PyTorch, residuals
    included, runs first)."""
    proc = cli("build", "--backend", "tensorrt", "--controlnet", "--preset", "1", "--device", "cpu", "--dir", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "building with tensorrt fp16, with ControlNet inputs" in proc.stdout
    assert re.search(r"^built \w+-tiny-controlnet-tensorrt-fp16-", proc.stdout, re.M), proc.stdout
    import onnx
    inputs = [i.name for i in onnx.load(next(tmp_path.glob("Unet-onnx/*controlnet*/unet.onnx"))).graph.input]
    assert inputs == (["x", "timesteps", "context"] + [f"control_{i}" for i in range(13)]
                      + [f"adapter_{i}" for i in range(4)])
