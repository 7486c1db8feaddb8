import hashlib
import json
import multiprocessing
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

from sd_unet_trt.trt_core.atomic import atomic_output, remove_stale_temps
from sd_unet_trt.trt_core.manifest import (INDEX_NAME, CheckpointId, EngineEntry, Manifest, ManifestError, engine_status)
from sd_unet_trt.trt_core.profiles import Profile

PROFILE = Profile.static(1, 64, 64)
CKPT = replace(CheckpointId.of("ab" * 32, "tiny"), weights="d" * 64)


def make_entry(manifest, name, content=b"engine", file=None):
    file = file or f"{name}.plan"
    (manifest.dir / file).parent.mkdir(parents=True, exist_ok=True)
    (manifest.dir / file).write_bytes(content)
    return EngineEntry(id=name, checkpoint=CKPT, family="tiny", backend="onnxruntime", backend_version="1.0",
                       gpu_arch="cpu", profile=PROFILE, precision="fp32", file=file, file_size=len(content),
                       file_sha256=hashlib.sha256(content).hexdigest())


def test_add_list_remove(tmp_path):
    m = Manifest(tmp_path)
    m.add(make_entry(m, "a"))
    m.add(make_entry(m, "b"))
    m.add(make_entry(m, "a", b"rebuilt"))  # same id replaces
    assert [e.id for e in m.entries()] == ["b", "a"]
    assert m.get("a").checkpoint == CKPT and m.get("a").profile == PROFILE
    m.remove("a")
    assert [e.id for e in m.entries()] == ["b"]
    assert not (tmp_path / "a.plan").exists() and not (tmp_path / "a.plan.json").exists()
    with pytest.raises(KeyError, match="no engine 'zzz'"):
        m.remove("zzz")


@pytest.mark.parametrize("content, words", [
    ("{not json", "is corrupt"),
    ('{"schema": "something-else", "entries": []}', "not an engine manifest"),
    ('{"schema": "sd-unet-engines", "schema_version": 99, "entries": []}', "schema version 99"),
    ('{"schema": "sd-unet-engines", "schema_version": 1, "entries": 5}', "no entry list"),
    (b"\xff\xfe\x00garbage", "is corrupt"),
])
def test_corrupt_or_foreign_manifest_gives_a_clear_message_and_changes_nothing(tmp_path, content, words):
    m = Manifest(tmp_path)
    m.add(make_entry(m, "a"))
    raw = content if isinstance(content, bytes) else content.encode()
    (tmp_path / INDEX_NAME).write_bytes(raw)
    with pytest.raises(ManifestError, match=words) as err:
        m.entries()
    assert "python -m sd_unet_trt recover" in str(err.value)
    with pytest.raises(ManifestError):
        m.add(make_entry(m, "b"))
    assert (tmp_path / INDEX_NAME).read_bytes() == raw


def test_recover_rebuilds_from_sidecars_and_keeps_the_broken_index(tmp_path):
    m = Manifest(tmp_path)
    m.add(make_entry(m, "a"))
    m.add(make_entry(m, "b"))
    (tmp_path / "b.plan").unlink()
    (tmp_path / INDEX_NAME).write_text("{truncated")
    report = m.recover()
    assert [e.id for e in report.entries] == ["a"] and [e.id for e in m.entries()] == ["a"]
    assert report.kept.read_text() == "{truncated" and report.notes == ["b.plan.json: its engine file b.plan is gone"]


def test_entries_outside_the_folder_are_refused(tmp_path):
    m = Manifest(tmp_path / "engines")
    outside = make_entry(m, "evil", file="../outside.plan")
    with pytest.raises(ValueError, match="points outside"):
        m.add(outside)
    good = make_entry(m, "good")
    m.add(good)
    data = json.loads(m.path.read_text())
    for bad_file in ["../outside.plan", "/etc/passwd", "sub/../../outside.plan"]:
        data["entries"].append({**data["entries"][0], "id": bad_file, "file": bad_file})
    data["entries"].append({"id": "half"})
    m.path.write_text(json.dumps(data))
    assert [e.id for e in m.entries()] == ["good"]
    assert len(m.problems) == 4 and sum("must be a plain file name inside the engine folder" in p
                                        for p in m.problems) == 3


def test_missing_files_are_pruned_and_status_says_why(tmp_path):
    m = Manifest(tmp_path)
    a, b = make_entry(m, "a"), make_entry(m, "b")
    m.add(a)
    m.add(b)
    (tmp_path / "a.plan").unlink()
    assert engine_status(m.get("a"), m, "1.0", "cpu").state == "missing"
    assert engine_status(m.get("b"), m, "2.0", "cpu").reason.startswith("built with onnxruntime 1.0, this machine has 2.0")
    assert "built for cpu, this GPU is sm_89" in engine_status(m.get("b"), m, "1.0", "sm_89").reason
    assert engine_status(m.get("b"), m, None, None).state == "stale"
    assert engine_status(m.get("b"), m, "1.0", "cpu").ready
    assert [e.id for e in m.prune()] == ["a"] and [e.id for e in m.entries()] == ["b"]


def _add_many(folder, prefix, count):
    m = Manifest(folder)
    for i in range(count):
        m.add(make_entry(m, f"{prefix}{i}"))


def test_two_writers_at_once_lose_nothing(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_many, args=(tmp_path, p, 15)) for p in ("x", "y")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    assert sorted(e.id for e in Manifest(tmp_path).entries()) == sorted([f"x{i}" for i in range(15)] + [f"y{i}" for i in range(15)])


def test_a_writer_killed_midway_leaves_no_entry_and_no_file(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        from sd_unet_trt.trt_core.atomic import atomic_output
        with atomic_output({str(tmp_path / 'engine.plan')!r}) as tmp:
            tmp.write_bytes(b"half an engine")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    subprocess.run([sys.executable, "-c", script], cwd=str(tmp_path), check=False)
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert "engine.plan" not in leftovers and len(leftovers) == 1  # only the dead writer's temp file
    assert Manifest(tmp_path).prune() == [] and list(tmp_path.glob(".partial-*")) == []


def test_atomic_output_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "f"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("new, half")
            raise RuntimeError("build failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_stale_temp_cleanup_spares_live_writers(tmp_path):
    with atomic_output(tmp_path / "f") as tmp:
        tmp.write_text("in progress")
        assert remove_stale_temps(tmp_path) == [] and tmp.exists()


def test_the_weights_record_goes_with_the_last_engine_that_shares_it(tmp_path):
    m = Manifest(tmp_path)
    m.add(make_entry(m, "a"))
    m.add(make_entry(m, "b"))
    record = m.weights_record_path(CKPT.weights)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"format": "sd-unet-weights/1", "digest": CKPT.weights}))
    m.remove("a")
    assert record.is_file()  # "b" holds the same weights
    m.remove("b")
    assert not record.exists()


def test_a_portable_engine_is_not_tied_to_one_gpu_arch(tmp_path):
    m = Manifest(tmp_path)
    m.add(replace(make_entry(m, "p"), gpu_arch="portable"))
    assert engine_status(m.get("p"), m, "1.0", "sm_89").ready  # its backend's file check decides (catalog)


def test_removing_an_engine_removes_its_companions_and_only_its_own(tmp_path):
    m = Manifest(tmp_path)
    m.add(make_entry(m, "a"))
    m.add(make_entry(m, "ab"))
    cache = m.dir / "a.plan.sm_89-NVIDIA-GeForce-RTX-4090.runtime-cache"
    cache.write_bytes(b"kernels")
    other = m.dir / "ab.plan.sm_89-NVIDIA-GeForce-RTX-4090.runtime-cache"
    other.write_bytes(b"kernels")
    m.remove("a")
    assert not cache.exists() and not (m.dir / "a.plan.json").exists() and other.exists()
    (m.dir / "ab.plan").unlink()
    assert [e.id for e in m.prune()] == ["ab"] and not other.exists()
