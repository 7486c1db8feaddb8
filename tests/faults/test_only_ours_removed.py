"""Everything that removes or replaces files touches only what it can prove this project wrote:
`remove` (also the tab's delete and the API's DELETE, which call it), the sweep of killed builds'
temps and of entries whose engine is gone, `export-triton`'s model folder, and install.py's
export-tools folder. A user's file with a name like ours is left as it is."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from sd_unet_trt.trt_core.manifest import Manifest
from sd_unet_trt.trt_core.workspace import Workspace
from tests.faults.helpers import REPO, cli, one_line_error

DEAD_PID = 999_999_999  # above any pid_max: no process has it


def the_entry(root: Path):
    manifest = Manifest(root / "Unet-trt")
    (entry,) = manifest.entries()
    return manifest, entry


def test_the_temp_sweep_removes_only_temps_of_the_pattern_it_writes(tmp_path):
    onnx_dir = tmp_path / "Unet-onnx"
    onnx_dir.mkdir()
    users = [onnx_dir / ".partial-notes.txt", onnx_dir / ".partial-", onnx_dir / ".partial-12ab-draft"]
    for path in users:
        path.write_text("mine")
    (onnx_dir / ".partial-folder").mkdir()
    (onnx_dir / ".partial-folder" / "photo.jpg").write_bytes(b"b")
    ours = [onnx_dir / f".partial-{DEAD_PID}-unet.onnx.x1y2", onnx_dir / f".partial-{DEAD_PID}-abc-tiny-fp32.q9"]
    ours[0].write_bytes(b"half an export")
    ours[1].mkdir()
    swept = Workspace(tmp_path).sweep()
    assert sorted(swept) == sorted(ours) and not any(p.exists() for p in ours)
    assert all(p.read_text() == "mine" for p in users) and (onnx_dir / ".partial-folder" / "photo.jpg").is_file()


def test_remove_keeps_a_users_files_named_after_the_engine(workspace):
    manifest, entry = the_entry(workspace)
    engine = manifest.file_path(entry)
    users = [engine.with_name(engine.name + ".backup"), engine.with_name(engine.name + ".notes.txt"),
             engine.with_name(engine.name + ".sm_89.runtime-cache.old")]
    for path in users:
        path.write_text("mine")
    proc = cli("remove", entry.id, "--dir", workspace)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not engine.exists() and not manifest.sidecar(entry).exists() and manifest.entries() == []
    assert all(p.read_text() == "mine" for p in users)


def test_remove_keeps_an_engine_file_that_is_not_the_one_built(workspace):
    manifest, entry = the_entry(workspace)
    engine = manifest.file_path(entry)
    engine.write_bytes(b"a file of the user's, saved under the engine's name")
    proc = cli("remove", entry.id, "--dir", workspace)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert manifest.entries() == [] and engine.read_bytes().startswith(b"a file of the user's")
    assert f"kept {engine.name}" in proc.stdout and "not the engine file that was built" in proc.stdout, proc.stdout


def test_remove_keeps_a_sidecar_and_a_weights_record_it_did_not_write(workspace):
    manifest, entry = the_entry(workspace)
    sidecar, record = manifest.sidecar(entry), manifest.weights_record_path(entry.checkpoint.weights)
    assert record.is_file()
    sidecar.write_text('{"my": "settings"}')
    record.write_text("my notes")
    proc = cli("remove", entry.id, "--dir", workspace)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert manifest.entries() == [] and not manifest.file_path(entry).exists()
    assert sidecar.read_text() == '{"my": "settings"}' and record.read_text() == "my notes"


def test_the_sweep_of_an_entry_whose_engine_is_gone_keeps_a_users_files(workspace):
    manifest, entry = the_entry(workspace)
    engine = manifest.file_path(entry)
    backup = engine.with_name(engine.name + ".backup")
    backup.write_text("mine")
    engine.unlink()
    assert cli("list", "--dir", workspace).returncode == 0  # every command starts with the sweep
    assert manifest.entries() == [] and backup.read_text() == "mine"


def test_export_triton_refuses_a_config_it_did_not_write(workspace, tmp_path):
    _, entry = the_entry(workspace)
    from sd_unet_trt.trt_core.serving.repository import model_name

    config = tmp_path / "repo" / model_name(entry.checkpoint.sha256) / "config.pbtxt"
    config.parent.mkdir(parents=True)
    config.write_text('name: "my_model"\nbackend: "onnxruntime"\n')
    proc = cli("export-triton", "--checkpoint", entry.checkpoint.sha256[:10], "--out", tmp_path / "repo",
               "--dir", workspace, "--device", "cpu")
    assert proc.returncode == 2, proc.stdout[-2000:]
    line = one_line_error(proc)
    assert str(config) in line and "choose another" in line, line
    assert config.read_text() == 'name: "my_model"\nbackend: "onnxruntime"\n'
    assert [p.name for p in config.parent.iterdir()] == ["config.pbtxt"]  # no version folder added


def test_export_triton_adds_a_version_over_its_own_config(workspace, tmp_path):
    _, entry = the_entry(workspace)
    args = ("export-triton", "--checkpoint", entry.checkpoint.sha256[:10], "--out", tmp_path / "repo",
            "--dir", workspace, "--device", "cpu")
    assert cli(*args).returncode == 0
    proc = cli(*args)
    assert proc.returncode == 0 and "(version 2)" in proc.stdout, proc.stderr[-2000:]


# ---- install.py's export-tools folder -------------------------------------------------------

@pytest.fixture
def installer(tmp_path, monkeypatch):
    """install.py with the export tools' folder under tmp_path; pip and the import check are doubles
    (no registry here): pip writes one module into the staging folder, which then imports."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("sd_unet_trt_install_faults", REPO / "install.py")
    install = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = install
    spec.loader.exec_module(install)
    monkeypatch.setattr(install, "HERE", tmp_path)
    monkeypatch.setattr(install, "EXPORT_TOOLS_DIR", tmp_path / ".export-tools")
    monkeypatch.setattr(install, "installed_versions", lambda: {})
    monkeypatch.setattr(install, "plan", lambda *a, **k: install.Plan([("onnx", "1.17.0")], ""))

    def pip_install(packages, target=None, **kwargs):
        (Path(target) / "onnx.py").write_text("VERSION = 'new'\n")
        return True, ""
    monkeypatch.setattr(install, "pip_install", pip_install)
    monkeypatch.setattr(install, "modules_import", lambda modules, extra=None: (extra is not None, ""))
    return install


def test_install_keeps_an_export_tools_folder_it_did_not_write(installer, capsys):
    folder = installer.export_tools_folder()
    folder.mkdir(parents=True)
    (folder / "my_module.py").write_text("mine")
    installer.install_export_tools()
    assert (folder / "my_module.py").read_text() == "mine" and not (folder / "onnx.py").exists()
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and str(folder) in said[0] and "was not written by this installer" in said[0], said


def test_install_replaces_its_own_outdated_export_tools_folder(installer):
    folder = installer.export_tools_folder()
    folder.mkdir(parents=True)
    (folder / installer.EXPORT_TOOLS_RECORD).write_text(json.dumps(
        {"python": "2.7", "packages": {"onnx": "1.0"}, "environment": {}}))
    (folder / "onnx.py").write_text("VERSION = 'old'\n")
    installer.install_export_tools()
    assert (folder / "onnx.py").read_text() == "VERSION = 'new'\n"
    assert json.loads((folder / installer.EXPORT_TOOLS_RECORD).read_text())["python"] == sys.version
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging or old copy left


def test_a_rebuild_replaces_the_engine_it_built_before(workspace):
    from tests.faults.killed_build import main

    manifest, entry = the_entry(workspace)
    main("none", workspace)
    (again,) = manifest.entries()
    assert again.id == entry.id and manifest.file_path(again).is_file()


@pytest.mark.parametrize("indexed", [False, True], ids=["no entry of that id", "the entry's file replaced"])
def test_a_build_never_replaces_a_users_file_under_the_engines_name(workspace, indexed):
    from sd_unet_trt.trt_core.manifest import ManifestError
    from tests.faults.killed_build import main

    manifest, entry = the_entry(workspace)
    engine = manifest.file_path(entry)
    if not indexed:  # the entry and its sidecar gone; a user's file left under the engine's name
        manifest.remove(entry.id)
    engine.write_bytes(b"a file of the user's, saved under the engine's name")
    with pytest.raises(ManifestError, match="is in the way of the new engine"):
        main("none", workspace)
    assert engine.read_bytes() == b"a file of the user's, saved under the engine's name"
    assert [e.id for e in manifest.entries()] == ([entry.id] if indexed else [])
