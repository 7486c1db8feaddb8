"""Facts about a backend live on the backend (backends/base.py declares them): its build rate, which
the estimate guesses from, and whether it is too slow to compile on the CPU to be picked there."""
from pathlib import Path

from sd_unet_trt.models.families import TINY
from sd_unet_trt.trt_core.backends import REGISTRY, backend_class, best_backend, get_backend
from sd_unet_trt.trt_core.estimate import estimate
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.workspace import Workspace


def test_each_backend_states_its_build_rate_and_cpu_speed():
    for name in REGISTRY:
        backend = backend_class(name)
        assert "build_rate" in vars(backend), f"{name} states no build rate of its own"
        fixed, per_billion = backend.build_rate
        assert fixed > 0 and per_billion > 0
        assert isinstance(backend.slow_on_cpu, bool)
    assert backend_class("torch").slow_on_cpu and not backend_class("onnxruntime").slow_on_cpu


def test_the_estimate_guesses_from_the_backends_own_rate(tmp_path: Path):
    checkpoint = CheckpointId.of("d" * 64, "tiny")
    for name in REGISTRY:
        fixed, per_billion = backend_class(name).build_rate
        guess = estimate(2_000_000_000, TINY, Profile.static(1, 64, 64), "fp16", name, "cpu", Workspace(tmp_path),
                         checkpoint, [])
        assert guess.build_seconds == fixed + 2 * per_billion, name
        assert guess.time_basis == f"rough guess for {name}; later estimates use your own build times"


def test_a_backend_slow_on_the_cpu_is_not_picked_there():
    # torch comes before onnxruntime in the registry and runs here: only its slow_on_cpu keeps it out
    assert get_backend("torch").availability().available and not get_backend("torch").can_run("cpu")
    picked = best_backend("cpu")
    assert picked.name != "torch" and not picked.slow_on_cpu
