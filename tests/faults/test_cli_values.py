"""Option values a careless user gives (issue 18): a seed beyond any generator's range, and a file
where the workspace folder belongs. Each is refused by the option's own check, in the same words
for every command, before anything runs."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.faults.helpers import REPO, cli

COMMANDS = {
    "list": ["list"],
    "build": ["build", "--backend", "onnxruntime", "--precision", "fp32", "--preset", "1"],
    "verify": ["verify"],
    "remove": ["remove", "some-id"],
    "recover": ["recover"],
    "export": ["export", "--checkpoint", "missing.safetensors"],
    "export-triton": ["export-triton", "--checkpoint", "ab", "--out", "triton-repo"],
    "ui": ["ui", "--port", "18931"],
    "demo": ["demo", "--steps", "1", "--backends", "onnxruntime"],
    "build-controlnet": ["build-controlnet", "missing.safetensors", "--backend", "onnxruntime"],
    "export-controlnet": ["export-controlnet", "missing.safetensors"],
}


def error_line(proc: subprocess.CompletedProcess) -> str:
    """argparse's answer: its usage line, then one error line."""
    assert proc.returncode == 2, (proc.stdout[-1000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("usage: ") and len([x for x in lines if "error:" in x]) == 1, proc.stderr
    return lines[-1]


@pytest.mark.parametrize("seed", ["999999999999999999999999", "-1", "4294967296"])
def test_a_seed_out_of_range_is_refused_naming_the_option(seed):
    line = error_line(cli("demo", "--seed", seed, "--steps", "1", "--backends", "onnxruntime", timeout=300))
    assert f"argument --seed: must be 0-4294967295, got {int(seed)}" in line


@pytest.mark.parametrize("command", COMMANDS)
def test_a_file_given_as_the_workspace_is_one_line_for_every_command(tmp_path, command):
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's file")
    line = error_line(cli(*COMMANDS[command], "--dir", notes, timeout=300))
    assert f"argument --dir: {notes} is a file, not a folder; give a folder (it is made when missing)" in line
    assert notes.read_text() == "a user's file" and sorted(tmp_path.iterdir()) == [notes]


def test_a_file_above_the_workspace_is_named_too(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's file")
    line = error_line(cli("list", "--dir", notes / "engines"))
    assert f"argument --dir: {notes} is a file, not a folder" in line


def test_the_standalone_tab_refuses_a_file_as_its_folder_in_the_same_words(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("a user's file")
    proc = subprocess.run([sys.executable, "-m", "sd_unet_trt.ui.standalone", "--dir", str(notes), "--port", "18932"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert f"argument --dir: {notes} is a file, not a folder" in error_line(proc)
