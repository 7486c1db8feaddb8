"""The whole build path on the tiny model with ONNX Runtime: export, verify, build, register."""
import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sd_unet_trt.models.families import family_named
from sd_unet_trt.trt_core.atomic import DiskFullError
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
from sd_unet_trt.trt_core.catalog import catalog, router_for_checkpoint
from sd_unet_trt.trt_core.identity import checkpoint_of_module
from sd_unet_trt.trt_core.progress import BuildCancelled, CancelToken
from sd_unet_trt.trt_core.unet_source import ModuleUNet
from sd_unet_trt.trt_core.pipeline import BuildBusy, build_engine
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.verify import VerificationError
from sd_unet_trt.trt_core.workspace import Workspace

TINY = family_named("tiny")
PROFILE = Profile(Range(1, 1, 2), Range(64, 64, 96), Range(64, 64, 96), Range(75, 75, 150))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def built(tiny_unet, tmp_path_factory):
    workspace = Workspace(tmp_path_factory.mktemp("ws"))
    checkpoint = checkpoint_of_module(tiny_unet, "tiny")
    phases = []
    entry = build_engine(ModuleUNet(tiny_unet, checkpoint, TINY), PROFILE, OnnxRuntimeBackend(), workspace, precision="fp32",
                         device="cpu", progress=lambda phase, f: phases.append((phase, f)))
    return workspace, checkpoint, entry, phases


def engine_files(workspace):
    return sorted(p.name for p in workspace.engine_dir.glob("*.onnx"))


def test_build_registers_a_verified_engine(built, tiny_unet):
    workspace, checkpoint, entry, phases = built
    assert entry.accuracy["max_rel"] < 1e-3 and entry.details["onnx_accuracy"]["max_rel"] < 1e-3
    assert (entry.backend, entry.precision, entry.gpu_arch, entry.profile) == ("onnxruntime", "fp32", "cpu", PROFILE)
    assert entry.checkpoint.sha256 == checkpoint.sha256 and entry.file_size == workspace.manifest().file_path(entry).stat().st_size
    fractions = [f for _, f in phases]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert [i.status.state for i in catalog(workspace, "cpu")] == ["ready"]
    router, left_out = router_for_checkpoint(workspace, checkpoint.sha256, "cpu")
    x, t, c = torch.randn(3, 4, 12, 10), torch.tensor([5.0, 500.0, 900.0]), torch.randn(3, 154, 768)
    result = router.run(x, t, c)
    with torch.no_grad():
        assert torch.allclose(result.output, tiny_unet(x, t, c), atol=1e-4) and left_out == []


class NoisyBackend(OnnxRuntimeBackend):
    """Deliberately wrong engines: the accuracy check must stop them."""
    name = "noisy"

    def load(self, *args, **kwargs):
        engine = super().load(*args, **kwargs)
        run = engine.__call__
        engine.__class__ = type("Noisy", (type(engine),), {"__call__": lambda self, *a: run(*a) * 1.05})
        return engine


class FullDiskBackend(OnnxRuntimeBackend):
    name = "fulldisk"

    def build(self, request, out_path, progress, cancel=None):
        out_path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")


class SlowBackend(OnnxRuntimeBackend):
    name = "slow"

    def build(self, request, out_path, progress, cancel=None):
        out_path.write_bytes(b"partial")
        progress("building", 0.5)
        cancel.raise_if_cancelled()
        raise AssertionError("cancel was not honoured")


def test_a_wrong_engine_is_refused_and_leaves_nothing(built, tiny_unet):
    workspace, checkpoint, _, _ = built
    before = (engine_files(workspace), [e.id for e in workspace.manifest().entries()])
    with pytest.raises(VerificationError, match="differs from the PyTorch UNet by .* it was not registered"):
        build_engine(ModuleUNet(tiny_unet, checkpoint, TINY), PROFILE, NoisyBackend(), workspace, precision="fp32", device="cpu")
    assert (engine_files(workspace), [e.id for e in workspace.manifest().entries()]) == before


def test_full_disk_and_cancel_leave_nothing(built, tiny_unet):
    workspace, checkpoint, _, _ = built
    before = sorted(p.name for p in workspace.engine_dir.iterdir())
    with pytest.raises(DiskFullError, match="disk full"):
        build_engine(ModuleUNet(tiny_unet, checkpoint, TINY), PROFILE, FullDiskBackend(), workspace, precision="fp32", device="cpu")
    token = CancelToken()
    with pytest.raises(BuildCancelled):
        build_engine(ModuleUNet(tiny_unet, checkpoint, TINY), PROFILE, SlowBackend(), workspace, precision="fp32", device="cpu",
                     progress=lambda phase, f: token.cancel() if phase == "building" else None, cancel=token)
    assert sorted(p.name for p in workspace.engine_dir.iterdir()) == before


def test_one_build_at_a_time(built, tiny_unet):
    from filelock import FileLock
    workspace, checkpoint, _, _ = built
    with FileLock(str(workspace.engine_dir / ".build.lock")):
        with pytest.raises(BuildBusy, match="another engine build is running"):
            build_engine(ModuleUNet(tiny_unet, checkpoint, TINY), PROFILE, OnnxRuntimeBackend(), workspace, device="cpu")


def test_a_build_killed_midway_leaves_no_entry(built):
    workspace, _, _, _ = built
    before = [e.id for e in workspace.manifest().entries()]
    script = textwrap.dedent(f"""
        import os, signal, sys
        from pathlib import Path
        from sd_unet_trt.models.families import family_named
        from sd_unet_trt.models.unet import seeded_unet, TINY
        from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend
        from sd_unet_trt.trt_core.identity import checkpoint_of_module
        from sd_unet_trt.trt_core.pipeline import build_engine
        from sd_unet_trt.trt_core.profiles import Profile
        from sd_unet_trt.trt_core.unet_source import ModuleUNet
        from sd_unet_trt.trt_core.workspace import Workspace
        unet = seeded_unet(TINY, seed=1)
        def die(phase, fraction):
            if phase.startswith("onnxruntime"):
                os.kill(os.getpid(), signal.SIGKILL)
        build_engine(ModuleUNet(unet, checkpoint_of_module(unet, "tiny"), family_named("tiny")), Profile.static(1, 64, 64),
                     OnnxRuntimeBackend(), Workspace(Path({str(workspace.root)!r})), precision="fp32",
                     device="cpu", progress=die)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert list(workspace.engine_dir.glob(".partial-*"))  # the dead build's temp file
    assert [e.id for e in workspace.manifest().entries()] == before
    assert not any("b1-1-1_h64-64-64" in name for name in engine_files(workspace))
    workspace.manifest().prune()
    assert not list(workspace.engine_dir.glob(".partial-*"))
