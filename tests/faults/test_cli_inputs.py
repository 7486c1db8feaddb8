"""The command line under bad and odd input, for real: one line and exit 2 (argparse's usage line
and error for malformed options), help for every command and option, and no temp folder left."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.faults.helpers import REPO, cli, leftovers, one_line_error, unregistered


@pytest.mark.parametrize("args, words", [
    (["demo", "--steps", "0"], "argument --steps: must be 1-1000, got 0"),
    (["demo", "--steps", "-3"], "argument --steps: must be 1-1000, got -3"),
    (["demo", "--backends", "tensorrt,nope"], "--backends takes names of tensorrt, torch, onnxruntime"),
    (["build", "--preset", "1", "--profile", "1:1:2,64:64:128,64:64:128,75:75:150"], "not allowed with argument"),
    (["build", "--backend", "onnxruntime", "--profile", "1:1:1000000000,64:64:64,64:64:64,75:75:75"],
     "batch: must lie within 1-32 images"),
    (["build", "--backend", "onnxruntime", "--profile", "1,2,3"], "--profile takes BATCH,HEIGHT,WIDTH,TOKENS"),
    (["build", "--backend", "onnxruntime", "--preset", "7"], "--preset must be 0-1 for tiny test UNet"),
    (["ui", "--port", "80"], "argument --port: must be 1024-65535"),
])
def test_bad_options_are_refused_in_one_line(tmp_path, args, words):
    proc = cli(*args, "--dir", tmp_path) if args[0] != "demo" else cli(*args)
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr and words in proc.stderr, proc.stderr[-2000:]
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_that_is_not_there_is_one_line():
    proc = cli("demo", "--device", "cuda")
    assert proc.returncode == 2 and "no CUDA GPU here" in proc.stderr and "Traceback" not in proc.stderr


def test_every_command_and_option_has_help():
    from sd_unet_trt.trt_core.cli.parser import parser
    from sd_unet_trt.ui.command import add_ui_command

    p = parser((add_ui_command,))  # as the entry points make it
    commands = p._subparsers._group_actions[0].choices
    missing = [f"{name} {action.option_strings or action.dest}" for name, sub in commands.items()
               for action in sub._actions if action.help is None]
    assert not missing, missing
    assert all(sub.description for sub in commands.values())


def test_verify_with_nothing_to_check_says_so(tmp_path):
    proc = cli("verify", "--dir", tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("nothing to check: 0 engines of tiny-builtin")


def test_build_picks_a_backend_that_runs_here_when_none_is_named(tmp_path):
    proc = cli("build", "--precision", "fp32", "--preset", "1", "--dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = "tensorrt" if __import__("torch").cuda.is_available() else "onnxruntime"
    assert proc.stdout.startswith(f"building with {expected} fp32") and "estimate: " in proc.stdout


def test_a_huge_profile_is_announced_before_it_runs_for_minutes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "sd_unet_trt", "build", "--backend", "onnxruntime",
                             "--precision", "fp32", "--profile", "1:1:2,64:64:2048,64:64:2048,75:75:75", "--dir",
                             str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = [proc.stdout.readline(), proc.stdout.readline(), proc.stdout.readline()]
    finally:
        proc.kill()
        proc.wait()
    said = "".join(first)
    assert "estimate: " in said and "warning: the checks run the UNet at the profile's largest shape" in said, said


def test_the_demo_explains_its_columns_and_leaves_no_temp_folder(tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = cli("demo", "--steps", "2", "--backends", "onnxruntime", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ms/step: median of 3 runs of 2 steps" in proc.stdout and "rel. error: |latents - PyTorch's|" in proc.stdout
    assert [p.name for p in tmp_path.iterdir() if "demo" in p.name] == []


def test_two_builds_at_once_one_waits_its_turn_in_one_line(tmp_path):
    args = [sys.executable, "-m", "sd_unet_trt", "build", "--backend", "onnxruntime", "--precision", "fp32",
            "--preset", "1", "--dir", str(tmp_path)]
    first = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "Unet-onnx").exists() and time.time() < deadline:  # the first one holds the lock
        time.sleep(0.2)
    second = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2
    assert "another engine build is running; wait for it to finish" in one_line_error(second)
    assert leftovers(tmp_path) == [] and unregistered(tmp_path) == []
