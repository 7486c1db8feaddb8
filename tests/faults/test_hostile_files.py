"""Corrupt, foreign and hostile manifests, sidecars, engine files and checkpoints, for real through
the command line: one clear line, exit 2 (1 for `verify`), nothing lost, nothing loaded that this
project did not build."""
from __future__ import annotations

import json
import os
import pickle
import shlex

import pytest
import torch

from sd_unet_trt.trt_core.backends.torch_compiled import TorchCompiledBackend
from sd_unet_trt.trt_core.catalog import router_for_checkpoint
from sd_unet_trt.trt_core.manifest import Manifest
from sd_unet_trt.trt_core.workspace import Workspace
from tests.faults.helpers import cli, leftovers, one_line_error


def index(root):
    return root / "Unet-trt" / "manifest.json"


def only_entry(root):
    return json.loads(index(root).read_text())["entries"][0]


# ---- manifests ---------------------------------------------------------------------------

@pytest.mark.parametrize("content, words", [
    ("{truncated", "is corrupt"),
    ('{"schema": "something-else"}', "not an engine manifest"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
], ids=["truncated", "foreign", "nested"])  # ids: some pytest versions put the whole value in tmp_path's name
def test_a_broken_manifest_is_one_line_and_its_hint_repairs_the_right_one(workspace, content, words):
    index(workspace).write_text(content)
    proc = cli("list", "--dir", workspace)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert words in line, line
    hint = line[line.index("`") + 1:line.rindex("`")]
    args = shlex.split(hint)[3:]  # after "python -m sd_unet_trt"
    fixed = cli(*args)
    assert fixed.returncode == 0 and "manifest rebuilt with 1 engines" in fixed.stdout, fixed.stderr
    assert not (workspace / "Unet-trt" / "Unet-trt").exists()
    assert cli("list", "--dir", workspace).stdout.startswith("ready ")


def test_recover_pointed_at_the_engine_folder_says_which_folder_it_takes(workspace):
    index(workspace).write_text("{truncated")
    proc = cli("recover", "--dir", workspace / "Unet-trt")
    assert proc.returncode == 2 and f"--dir {workspace}" in one_line_error(proc)
    assert not (workspace / "Unet-trt" / "Unet-trt").exists() and index(workspace).read_text() == "{truncated"


@pytest.mark.parametrize("change", [
    {"file_size": "big"}, {"profile": "64x64"}, {"checkpoint": ["not", "an", "object"]},
    {"details": json.loads("[" * 64 + "]" * 64)}, {"file": "manifest.json"}, {"file": "../../etc/passwd"},
])
def test_a_bad_entry_is_skipped_with_a_word_and_cannot_touch_the_index(workspace, change):
    data = json.loads(index(workspace).read_text())
    good = data["entries"][0]
    data["entries"].append({**good, "id": "bad", **change})
    index(workspace).write_text(json.dumps(data))
    listing = cli("list", "--dir", workspace)
    assert listing.returncode == 0 and listing.stdout.startswith("ready ")
    assert "skipped: malformed entry 'bad'" in listing.stdout, listing.stdout
    removed = cli("remove", "bad", "--dir", workspace)
    assert removed.returncode == 2 and "no engine 'bad'" in one_line_error(removed)
    assert index(workspace).is_file() and json.loads(index(workspace).read_text())["entries"][0] == good


def test_a_garbage_sidecar_is_reported_by_recover_and_loses_nothing(workspace):
    (workspace / "Unet-trt" / "junk.ort.onnx.json").write_text("[" * 100_000)
    (workspace / "Unet-trt" / "orphan.ort.onnx").write_bytes(b"not registered anywhere")
    index(workspace).unlink()
    proc = cli("recover", "--dir", workspace)
    assert proc.returncode == 0 and "manifest rebuilt with 1 engines" in proc.stdout, proc.stderr
    assert "junk.ort.onnx.json" in proc.stdout and "orphan.ort.onnx: a file no sidecar describes" in proc.stdout
    assert (workspace / "Unet-trt" / "orphan.ort.onnx").is_file()


# ---- engine files --------------------------------------------------------------------------

def test_an_engine_overwritten_with_random_bytes_is_never_loaded(workspace):
    entry = only_entry(workspace)
    engine = workspace / "Unet-trt" / entry["file"]
    engine.write_bytes(os.urandom(1000))  # another size: `list` sees it at once
    listing = cli("list", "--dir", workspace)
    assert listing.stdout.startswith("stale ") and "changed size since it was built" in listing.stdout
    engine.write_bytes(os.urandom(entry["file_size"]))  # the same size: the sha256 check at load catches it
    verify = cli("verify", "--dir", workspace)
    assert verify.returncode == 1 and "Traceback" not in verify.stderr
    assert "FAIL" in verify.stdout and "is not the file that was built" in verify.stdout, verify.stdout


def test_a_torch_engine_file_that_is_not_the_one_built_is_never_unpickled(workspace, monkeypatch):
    """A torch-backend engine is code (a pickle). One whose bytes differ from the build's is refused
    before the backend opens it."""
    data = json.loads(index(workspace).read_text())
    entry = data["entries"][0]
    torch_file = entry["file"].replace(".ort.onnx", ".torch.zip")
    payload = pickle.dumps(print)  # stands in for a hostile pickle
    (workspace / "Unet-trt" / torch_file).write_bytes(payload.ljust(entry["file_size"], b"\0"))
    data["entries"].append({**entry, "id": entry["id"] + "-torch", "backend": "torch", "file": torch_file})
    index(workspace).write_text(json.dumps(data))
    opened = []
    monkeypatch.setattr(TorchCompiledBackend, "load", lambda self, path, *a, **k: opened.append(path))
    monkeypatch.setattr(TorchCompiledBackend, "version", lambda self: entry["backend_version"])
    monkeypatch.setattr(TorchCompiledBackend, "device_arch", lambda self, device="cuda": entry["gpu_arch"])
    router, _ = router_for_checkpoint(Workspace(workspace), entry["checkpoint"]["sha256"], "cpu",
                                      preferred_backend="torch")
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([10.0, 10.0]), torch.randn(2, 77, 768)
    result = router.run(x, t, c)
    assert opened == [] and result.covered and result.engine.startswith("[onnxruntime")
    assert "is not the file that was built" in router.failed[entry["id"] + "-torch"]


# ---- checkpoints -----------------------------------------------------------------------------

class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("name, content", [
    ("empty.safetensors", b""), ("empty.ckpt", b""), ("garbage.safetensors", os.urandom(4096)),
    ("garbage.ckpt", os.urandom(4096)), ("hostile.ckpt", None),
])
def test_a_bad_checkpoint_is_one_line_and_runs_nothing(tmp_path, name, content):
    path = tmp_path / name
    if content is None:
        torch.save({"state_dict": {"x": Payload()}}, path, _use_new_zipfile_serialization=True)
    else:
        path.write_bytes(content)
    proc = cli("build", "--backend", "onnxruntime", "--checkpoint", path, "--dir", tmp_path / "ws")
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert line.startswith(f"error: {name}") and len(line) < 300, line
    assert not (tmp_path / "PWNED").exists() and not (tmp_path.parent / "PWNED").exists()
    assert leftovers(tmp_path / "ws") == [] and Manifest(tmp_path / "ws" / "Unet-trt").entries() == []
