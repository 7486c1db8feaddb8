"""A workspace this process may read but not change, and an engine file replaced by a symbolic
link (issue 18 items 2 and 8), against a real built workspace and the real CLI.

Tests run as root in CI, and root ignores permission bits: a chmod'ed folder proves nothing there.
A read-only bind mount (in a mount namespace of the child's own, `unshare -m`) refuses root too
(EROFS), and an unprivileged user (`setpriv` to nobody) meets EACCES on root's files. Each way is
checked to really refuse a write before the CLI runs; where the machine allows neither, the test
is skipped with the reason."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.manifest import Manifest
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.workspace import Workspace
from sd_unet_trt.ui.standalone import tiny_model
from tests.faults.helpers import REPO, cli
from tests.faults.killed_build import PROFILE

NOBODY = 65534


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A workspace with one ready engine (ONNX Runtime, fp32, the tiny model)."""
    root = tmp_path_factory.mktemp("built")
    entry = build_engine(tiny_model(), PROFILE, OnnxRuntimeBackend(), Workspace(root), precision="fp32", device="cpu")
    return root, entry.id


@pytest.fixture
def shared_copy(built):
    """A copy of the built workspace in a folder every user may read (pytest's own is root's alone)."""
    parent = Path(tempfile.mkdtemp(prefix="sd-unet-shared-"))
    parent.chmod(0o755)
    root = parent / "ws"
    shutil.copytree(built[0], root, symlinks=True)
    yield root, built[1]
    shutil.rmtree(parent)


def read_only_mount(root: Path, *command: str) -> list[str]:
    """`command` in a mount namespace where `root` is bind-mounted read-only; exit 99 if a write works."""
    script = (f'mount --bind -o ro "$1" "$1" && ! touch "$1/Unet-trt/.probe" 2>/dev/null || exit 99; '
              f'shift; exec "$@"')
    return ["unshare", "-m", "sh", "-c", script, "sh", str(root), *command]


def as_nobody(root: Path, *command: str) -> list[str]:
    """`command` as the unprivileged user nobody; exit 99 if it may write into the engine folder."""
    script = f'! touch "$1/Unet-trt/.probe" 2>/dev/null || exit 99; shift; exec "$@"'
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "sh", "-c", script, "sh",
            str(root), *command]


WAYS = {"read-only mount": read_only_mount, "another user's files": as_nobody}


def run_restricted(way: str, root: Path, *args: str) -> subprocess.CompletedProcess:
    home = Path(tempfile.mkdtemp(prefix="sd-unet-home-"))  # caches torch may write, for either user
    home.chmod(0o777)
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(home)}
    probe = subprocess.run(WAYS[way](root, sys.executable, "-c", "import sd_unet_trt.trt_core"), cwd=REPO,
                           capture_output=True, text=True, env=env)
    if probe.returncode == 99:
        pytest.fail(f"{way}: the engine folder can still be written, so this would test nothing")
    if probe.returncode != 0:
        pytest.skip(f"{way} is not possible here: {probe.stderr.strip()[-300:]}")
    try:
        return subprocess.run(WAYS[way](root, sys.executable, "-m", "sd_unet_trt", *args), cwd=REPO,
                              capture_output=True, text=True, env=env, timeout=600)
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.parametrize("way", WAYS)
def test_a_workspace_that_cannot_be_written_is_listed_and_verified(shared_copy, way):
    root, entry_id = shared_copy
    before = sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))
    listing = run_restricted(way, root, "list", "--dir", str(root), "--device", "cpu")
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr[-2000:]
    assert listing.stdout.startswith(f"ready      {entry_id}"), listing.stdout
    checked = run_restricted(way, root, "verify", "--dir", str(root), "--device", "cpu")
    assert checked.returncode == 0 and "Traceback" not in checked.stderr, checked.stderr[-2000:]
    assert checked.stdout.startswith(f"ok   {entry_id}: relative error"), checked.stdout
    assert sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*")) == before


@pytest.mark.parametrize("target_place", ["outside", "inside"])
def test_an_engine_replaced_by_a_symlink_is_listed_as_one_and_removed_without_following_it(built, tmp_path,
                                                                                          target_place):
    root = tmp_path / "ws"
    shutil.copytree(built[0], root, symlinks=True)
    entry = Manifest(root / "Unet-trt").get(built[1])
    engine = root / "Unet-trt" / entry.file
    sidecar = engine.with_name(engine.name + ".json")
    # a user's file with the engine's very bytes: only a followed link could pass it for the engine
    target = (tmp_path / "elsewhere" if target_place == "outside" else root / "Unet-trt") / "users-file.bin"
    target.parent.mkdir(exist_ok=True)
    shutil.copyfile(engine, target)
    engine.unlink()
    engine.symlink_to(target)

    listing = cli("list", "--dir", root)
    assert listing.returncode == 0 and "Traceback" not in listing.stderr, listing.stderr[-2000:]
    assert listing.stdout.startswith(f"missing    {entry.id}"), listing.stdout
    assert f"{entry.file} is a symbolic link (to {target}), not the engine file that was built" in listing.stdout

    removed = cli("remove", entry.id, "--dir", root)
    assert removed.returncode == 0 and removed.stdout.startswith(f"removed {entry.id}"), removed.stderr[-2000:]
    assert not engine.is_symlink() and not engine.exists() and not sidecar.exists()
    assert target.read_bytes()[:64] and target.stat().st_size == entry.file_size  # the target is untouched
    assert Manifest(root / "Unet-trt").entries() == []
