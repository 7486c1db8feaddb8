"""kill -9 at every phase of a build, for real, in a child process: the next start (any command)
clears what it left, an engine that was complete is registered, and a build afterwards works."""
from __future__ import annotations

import signal

import pytest

from sd_unet_trt.trt_core.manifest import Manifest
from tests.faults.helpers import cli, killed_build, leftovers, unregistered

PHASES = ["export", "engine-write", "rename", "registration"]


@pytest.mark.parametrize("phase", PHASES)
def test_a_killed_build_leaves_nothing_the_next_start_does_not_clear(tmp_path, phase):
    killed = killed_build(phase, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    listing = cli("list", "--dir", tmp_path)
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr[-2000:]
    assert leftovers(tmp_path) == [] and unregistered(tmp_path) == []
    if phase in ("rename", "registration"):  # the engine was complete: it is kept, registered and usable
        assert listing.stdout.startswith("ready "), listing.stdout
    again = killed_build("none", tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    manifest = Manifest(tmp_path / "Unet-trt")
    assert len(manifest.entries()) == 1 and manifest.problems == []
    assert leftovers(tmp_path) == [] and unregistered(tmp_path) == []


def test_recover_clears_both_folders_and_keeps_every_complete_engine(tmp_path):
    assert killed_build("registration", tmp_path).returncode == -signal.SIGKILL
    assert killed_build("export", tmp_path / "second").returncode == -signal.SIGKILL
    (tmp_path / "second").rename(tmp_path / "second-kept")
    for partial in (tmp_path / "second-kept" / "Unet-onnx").iterdir():
        partial.rename(tmp_path / "Unet-onnx" / partial.name)  # a killed export's folder in this workspace
    assert leftovers(tmp_path)
    (tmp_path / "Unet-trt" / "manifest.json").write_text("{broken")
    proc = cli("recover", "--dir", tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "manifest rebuilt with 1 engines" in proc.stdout and leftovers(tmp_path) == []
    assert unregistered(tmp_path) == [] and len(Manifest(tmp_path / "Unet-trt").entries()) == 1


def failing_index_write(monkeypatch):
    from sd_unet_trt.trt_core import manifest as manifest_module

    real = manifest_module.Manifest._write

    def write(self, entries):
        if entries:  # registering, not recovering an empty index
            raise OSError(28, "No space left on device", str(self.path))
        real(self, entries)
    monkeypatch.setattr(manifest_module.Manifest, "_write", write)


def test_a_failed_registration_leaves_no_sidecar_and_no_engine(tmp_path, monkeypatch):
    from sd_unet_trt.trt_core.atomic import DiskFullError
    from tests.faults.killed_build import main

    failing_index_write(monkeypatch)
    with pytest.raises(DiskFullError, match="disk full"):
        main("none", tmp_path)
    engines = tmp_path / "Unet-trt"
    assert [p.name for p in engines.iterdir() if not p.name.startswith(".") and p.name != "weights"] == []
    assert leftovers(tmp_path) == []


def test_a_failed_rebuild_keeps_the_engine_it_would_have_replaced(tmp_path, monkeypatch):
    from sd_unet_trt.trt_core.atomic import DiskFullError
    from tests.faults.killed_build import main

    main("none", tmp_path)
    manifest = Manifest(tmp_path / "Unet-trt")
    entry = manifest.entries()[0]
    before = (manifest.file_path(entry).read_bytes(), manifest.sidecar(entry).read_bytes(), manifest.path.read_bytes())
    failing_index_write(monkeypatch)
    with pytest.raises(DiskFullError):
        main("none", tmp_path)
    after = (manifest.file_path(entry).read_bytes(), manifest.sidecar(entry).read_bytes(), manifest.path.read_bytes())
    assert after == before and leftovers(tmp_path) == []
