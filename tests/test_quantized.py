"""INT8 and FP8 (#12, in progress): Model Optimizer's calibrated Q/DQ exports of the tiny model, built
by the real TensorRT for RTX builder (in a child process, as tests/test_tensorrt_rtx_builds.py does:
Polygraphy serves one library per process); FP8 only for GPUs that have it; the INT8 export runs in
ONNX Runtime; the denoising-loop quality measure; the pipeline does not offer them yet."""
from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sd_unet_trt.models.families import TINY
from sd_unet_trt.models.unet import seeded_unet
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.backends.tensorrt import TensorRTBackend
from sd_unet_trt.trt_core.backends.tensorrt.hardware import GpuInfo
from sd_unet_trt.trt_core.export import sample_inputs
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.quality import euler_schedule, loop_quality
from sd_unet_trt.trt_core.quantize import capability_problem

pytest.importorskip("modelopt.torch.quantization", reason="nvidia-modelopt is not installed (pip install -e '.[test]')")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("tensorrt_rtx_bindings", reason="TensorRT for RTX is not installed")
    out = tmp_path_factory.mktemp("quantized")
    proc = subprocess.run([sys.executable, "-m", "tests.rtx.build_quantized_engines", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


def test_int8_and_fp8_exports_carry_calibrated_qdq_pairs_and_the_checkpoints_weights(built):
    int8, fp8 = built["int8"], built["fp8"]
    assert int8["quantize_ops"] == {"QuantizeLinear": 580, "DequantizeLinear": 580}, int8["quantize_ops"]
    assert fp8["quantize_ops"] == {"TRT_FP8QuantizeLinear": 580, "TRT_FP8DequantizeLinear": 580}, fp8["quantize_ops"]
    unet_weights = len(seeded_unet(TINY.unet_config()).state_dict())
    assert int8["weights"] == fp8["weights"] == unet_weights
    assert (int8["record_dtype"], fp8["record_dtype"]) == ("int8", "fp8")


def test_the_real_builder_makes_int8_and_fp8_engines_without_a_gpu(built):
    int8, fp8 = built["int8"], built["fp8"]
    assert "error" not in int8 and "error" not in fp8, (int8.get("error"), fp8.get("error"))
    assert (int8["header_precision"], fp8["header_precision"]) == ("int8", "fp8")
    assert int8["plan_bytes"] > 1_000_000 and fp8["plan_bytes"] > 1_000_000
    # FP8 only for the GPUs whose tensor cores have it; no quantized engine takes new weights
    assert int8["details"]["targets"] == ["sm_80", "sm_86", "sm_89", "sm_120", "sm_121"]
    assert fp8["details"]["targets"] == ["sm_89", "sm_120", "sm_121"]
    assert not int8["details"]["refittable"] and not fp8["details"]["refittable"]
    assert "not refittable" in fp8["details"]["notes"][-1]


def test_the_real_builder_refuses_fp8_for_ampere_which_is_why_the_targets_are_filtered(built):
    assert "fp8" in built["fp8-ampere"]["error"] and "sm86" in built["fp8-ampere"]["error"], built["fp8-ampere"]


def test_the_int8_export_runs_in_onnx_runtime_within_the_quantization_error(built):
    unet = seeded_unet(TINY.unet_config()).eval()
    profile = Profile.static(2, 64, 64)
    engine = OnnxRuntimeBackend().load(Path(built["int8"]["onnx"]), "int8", TINY, profile, device="cpu")
    try:
        args = sample_inputs(TINY, 2, 8, 8, 77, torch.float32, "cpu", torch.Generator().manual_seed(3))
        got, want = engine(*args).numpy(), unet(*args).detach().numpy()
    finally:
        engine.close()
    error = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert 1e-3 < error < 0.3, error  # quantized (not a copy of fp32), and not garbage


def test_fp8_needs_ada_or_newer_and_says_so():
    assert capability_problem("fp8", (8, 6)) == ("fp8 engines need a GPU of compute capability 8.9 or newer "
                                                 "(this one is 8.6)")
    assert capability_problem("fp8", (9, 0)) is None and capability_problem("int8", (8, 6)) is None
    ampere = TensorRTBackend(gpu_probe=lambda device: GpuInfo(True, (8, 6), 2**34, 2**35, "A10"))
    assert "8.9 or newer" in ampere.precision_problem("fp8")
    assert ampere.precision_problem("int8") is None and "not offered" in ampere.precision_problem("bf16")


def test_the_loop_schedule_is_the_webuis_discrete_one():
    sigmas, timesteps = euler_schedule(20)
    assert len(sigmas) == 21 and sigmas[-1] == 0 and timesteps[0] == 999 and timesteps[-1] == 0
    assert abs(sigmas[0].item() - 14.6146) < 1e-3 and abs(sigmas[-2].item() - 0.0292) < 1e-3


def test_the_loop_quality_is_zero_for_the_same_unet_and_grows_with_precision_lost():
    unet = seeded_unet(TINY.unet_config()).eval()
    same = loop_quality(unet, unet, TINY, (8, 8), seeds=1, prompts=1, steps=6)
    assert same.latent_rel_error == 0 and same.cases == 1 and same.steps == 6
    bf16 = copy.deepcopy(unet).bfloat16()
    lossy = loop_quality(lambda *a: bf16(*[t.bfloat16() if t.dim() > 1 else t for t in a]).float(), unet, TINY,
                         (8, 8), seeds=1, prompts=1, steps=6)
    assert 1e-4 < lossy.latent_rel_error < 0.5, lossy
    again = loop_quality(lambda *a: bf16(*[t.bfloat16() if t.dim() > 1 else t for t in a]).float(), unet, TINY,
                         (8, 8), seeds=1, prompts=1, steps=6)
    assert again == lossy  # same noise, same prompts: reproducible


def test_tensorrt_says_at_once_when_model_optimizer_is_missing_where_the_export_runs(monkeypatch):
    """Inside the WebUI (no Model Optimizer in its venv or the export-tools folder) an int8 request
    gets one line before anything is exported, not a failure minutes into the build."""
    import importlib.util

    from sd_unet_trt.trt_core import quantize
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "modelopt" else real(name, *a))
    monkeypatch.setattr(quantize, "export_tools_path", lambda: None)
    hopper = TensorRTBackend(gpu_probe=lambda device: GpuInfo(True, (9, 0), 2**36, 2**37, "H200"))
    for precision in ("int8", "fp8"):
        assert "Model Optimizer, which is not installed where the export runs" in hopper.precision_problem(precision)
    assert hopper.precision_problem("fp16") is None
