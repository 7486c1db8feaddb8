"""The double's state: which library and version it plays (its flavor), the GPU it pretends to
run on, and counters the tests read. Kept in one place so every part of the double sees the same."""
from __future__ import annotations

from dataclasses import dataclass

# Members of the double's classes that only TensorRT for RTX has (so the other flavors hide them).
RTX_ONLY = frozenset({"create_runtime_config", "num_compute_capabilities", "set_compute_capability",
                      "get_compute_capability", "get_engine_validity", "engine_header_size"})


@dataclass(frozen=True)
class Flavor:
    library: str  # "tensorrt" or "tensorrt_rtx"
    version: str
    absent: frozenset[str]  # public members of the double's classes this version lacks
    strongly_typed_only: bool  # no weak typing: precision comes from the network's own types

    @property
    def rtx(self) -> bool:
        return self.library == "tensorrt_rtx"


FLAVORS = {
    "10.0": Flavor("tensorrt", "10.0.1", RTX_ONLY | {"device_memory_size_v2", "set_device_memory"}, False),
    "10": Flavor("tensorrt", "10.16.1.11", RTX_ONLY, False),
    # 11 removed weak typing, the old memory size and setter, calibrators and layer precisions
    "11": Flavor("tensorrt", "11.4.0.106", RTX_ONLY | {"device_memory_size", "device_memory", "int8_calibrator",
                                                       "precision_is_set"}, True),
    "rtx": Flavor("tensorrt_rtx", "1.7.1.116", frozenset({"device_memory_size", "int8_calibrator", "precision_is_set"}),
                  True),
}
# Compute capabilities TensorRT for RTX 1.7 runs engines on (its runtime refused 9.0 listing these)
RTX_RUNS_ON = ("sm_80", "sm_86", "sm_89", "sm_120", "sm_121")


class State:
    flavor: Flavor = FLAVORS["10"]
    device: str | None = "sm_89"  # the GPU the double pretends to have; None: no GPU
    stats: dict[str, int] = {}
    used_names: set[str] = set()


def count(key: str, n: int = 1) -> None:
    State.stats[key] = State.stats.get(key, 0) + n


class _Strict:
    """Reading or writing an attribute the real class lacks raises, as pybind11 objects do; so does
    a member the flavor's version does not have."""

    def __getattribute__(self, name: str):
        if not name.startswith("_"):
            if name in State.flavor.absent:
                raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}' "
                                     f"in {State.flavor.library} {State.flavor.version}")
            State.used_names.add(name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value) -> None:
        if not name.startswith("_"):
            State.used_names.add(name)
            prop = getattr(type(self), name, None)
            if name in State.flavor.absent or not isinstance(prop, property) or prop.fset is None:
                raise AttributeError(f"'{type(self).__name__}' object has no writable attribute '{name}'")
        object.__setattr__(self, name, value)
