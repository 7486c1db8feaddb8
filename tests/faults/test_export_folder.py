"""`export --out FOLDER` against real folders of a user's files, for real through the command line:
a folder holding anything but an earlier export of ours is refused in one line and loses nothing;
an earlier export of ours is replaced with no moment when neither it nor the new one is there."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sd_unet_trt.trt_core.export import DATA_NAME, ONNX_NAME, ExportResult
from sd_unet_trt.trt_core.weights import RECORD_NAME, WeightsRecord
from tests.faults.helpers import REPO, killed_build, one_line_error

OURS = {ONNX_NAME, DATA_NAME, RECORD_NAME}


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    from sd_unet_trt.models.families import TINY
    from sd_unet_trt.models.unet import seeded_unet

    unet = seeded_unet(TINY.unet_config(), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.safetensors")


def export(checkpoint: Path, out, cwd: Path = REPO, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "sd_unet_trt", "export", "--checkpoint", str(checkpoint), "--out",
                           str(out), "--weights", "fp32"], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=env)


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (links not followed) and what it holds."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = f"link -> {os.readlink(path)}"
        elif path.is_file():
            out[key] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[key] = "folder"
    return out


def users_files(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("a")
    (folder / "sub" / "photo.jpg").write_bytes(b"b" * 100)
    return folder


def assert_refused(proc: subprocess.CompletedProcess, folder: Path) -> None:
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    line = one_line_error(proc)
    assert str(folder) in line and "choose another" in line, line


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".partial-"))


def test_a_folder_of_a_users_files_is_refused_and_loses_nothing(checkpoint, tmp_path):
    folder = users_files(tmp_path / "v")
    before = snapshot(tmp_path)
    proc = export(checkpoint, folder)
    assert_refused(proc, folder)
    assert snapshot(tmp_path) == before


def test_dot_run_from_a_folder_of_files_is_refused_and_loses_nothing(checkpoint, tmp_path):
    folder = users_files(tmp_path / "with-files")
    before = snapshot(tmp_path)
    proc = export(checkpoint, ".", cwd=folder)
    assert_refused(proc, folder)
    assert snapshot(tmp_path) == before


def test_the_workspace_itself_is_refused_and_its_engines_and_manifest_stay(checkpoint, tmp_path):
    artifacts = tmp_path / "artifacts"
    assert killed_build("none", artifacts).returncode == 0  # a real tiny build: engine, sidecar, manifest, export
    assert (artifacts / "Unet-trt" / "manifest.json").is_file()
    before = snapshot(tmp_path)
    proc = export(checkpoint, "./artifacts", cwd=tmp_path)
    assert_refused(proc, artifacts)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("empty", [False, True])
def test_a_symlink_to_a_folder_elsewhere_is_refused_and_neither_changes(checkpoint, tmp_path, empty):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir() if empty else users_files(elsewhere)
    link = tmp_path / "here" / "link"
    link.parent.mkdir()
    link.symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(tmp_path)
    proc = export(checkpoint, link)
    assert_refused(proc, link)
    assert snapshot(tmp_path) == before


def test_the_home_folder_is_refused_and_loses_nothing(checkpoint, tmp_path):
    home = tmp_path / "home"
    (home / "Documents").mkdir(parents=True)
    (home / ".bashrc").write_text("alias ll='ls -l'\n")
    (home / "Documents" / "thesis.odt").write_bytes(b"years of work")
    before = snapshot(tmp_path)
    proc = export(checkpoint, home, cwd=home, env={"HOME": str(home)})  # `--out ~` as the shell expands it
    assert_refused(proc, home)
    assert snapshot(tmp_path) == before


def test_an_export_of_ours_with_a_users_file_beside_it_is_refused(checkpoint, tmp_path):
    out = tmp_path / "export"
    assert export(checkpoint, out).returncode == 0
    (out / "my-notes.txt").write_text("keep me")
    before = snapshot(tmp_path)
    assert_refused(export(checkpoint, out), out)
    assert snapshot(tmp_path) == before


def test_a_new_or_empty_folder_is_written_and_an_empty_one_is_kept_as_it_is(checkpoint, tmp_path):
    new = tmp_path / "a" / "new"
    assert export(checkpoint, new).returncode == 0
    assert {p.name for p in new.iterdir()} <= OURS and (new / RECORD_NAME).is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    inode = empty.stat().st_ino
    proc = export(checkpoint, ".", cwd=empty)  # `--out .` in an empty folder: written into it, not replaced
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert empty.stat().st_ino == inode and (empty / ONNX_NAME).is_file() and (empty / RECORD_NAME).is_file()
    assert partials(tmp_path) == [] and partials(tmp_path / "a") == []


def test_an_earlier_export_of_ours_is_replaced_by_the_new_one(checkpoint, tmp_path):
    out = tmp_path / "export"
    assert export(checkpoint, out).returncode == 0
    first = WeightsRecord.load(out / RECORD_NAME)
    other = tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    proc = export(other, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert WeightsRecord.load(out / RECORD_NAME).digest != first.digest
    assert {p.name for p in out.iterdir()} <= OURS and partials(tmp_path) == []


@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "rename-aside"])
def test_replacing_an_export_leaves_no_moment_without_one(tmp_path, monkeypatch, exchange):
    """A reader polling the folder all through a replacement always finds a whole export; the
    removal of the old one is slowed down as for a large export."""
    import shutil
    import time

    from sd_unet_trt.models.families import TINY
    from sd_unet_trt.models.unet import seeded_unet
    from sd_unet_trt.trt_core import export as export_module

    out = tmp_path / "export"
    export_module.export_onnx(seeded_unet(TINY.unet_config(), 0), TINY, out, weights="fp32", device="cpu")
    if not exchange:  # as on a file system or kernel without renameat2(RENAME_EXCHANGE)
        from sd_unet_trt.trt_core import export_folder
        monkeypatch.setattr(export_folder, "exchange", lambda a, b: False)
    real_rmtree = shutil.rmtree

    def slow_rmtree(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        time.sleep(0.3)
    monkeypatch.setattr(shutil, "rmtree", slow_rmtree)
    missing, done = [], threading.Event()

    def poll():
        while not done.is_set():
            try:
                ExportResult.read(out, TINY, "fp32")
            except ValueError as e:
                missing.append(str(e))
    reader = threading.Thread(target=poll)
    reader.start()
    try:
        result = export_module.export_onnx(seeded_unet(TINY.unet_config(), 1), TINY, out, weights="fp32", device="cpu")
    finally:
        done.set()
        reader.join()
    assert result.record.digest == WeightsRecord.load(out / RECORD_NAME).digest
    if exchange:  # renaming the old one aside and the new one in leaves two renames' time without either
        assert missing == [], missing[:3]
    assert partials(tmp_path) == []
