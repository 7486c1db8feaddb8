"""ONNX Runtime's optimizer notes are ours to show (issue 18): a build printed about 240 yellow
"UnsqueezeElimination cannot remove node" lines before its result; now they are in our log, at
INFO, shown with -v only."""
from __future__ import annotations

from tests.faults.helpers import cli


def test_a_build_prints_no_onnxruntime_warnings_unless_verbose(tmp_path):
    build = ["build", "--backend", "onnxruntime", "--precision", "fp32", "--device", "cpu"]
    quiet = cli(*build, "--dir", tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "UnsqueezeElimination" not in quiet.stderr and ":onnxruntime:" not in quiet.stderr, quiet.stderr[:3000]
    assert len(quiet.stderr) < 5000, quiet.stderr[:3000]  # the progress bar, not 69 kB
    verbose = cli(*build, "-v", "--dir", tmp_path / "verbose")
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    notes = [line for line in verbose.stderr.splitlines() if "UnsqueezeElimination" in line]
    assert notes and all("INFO onnxruntime: " in line for line in notes), notes[:3]  # a line may follow a bar
