"""The Python-visible names of a real TensorRT bindings wheel, read without a GPU.

The wheel (tensorrt-cu12-bindings, about 1.3 MB) installs from PyPI anywhere; its compiled module
`tensorrt_bindings/tensorrt.so` holds every name pybind11 registers (classes, methods, properties,
enum members) in its string table, and its `__init__.py` adds a few Python-level ones (`__version__`,
`nptype`). A name may be the tail of a longer string (the linker packs strings together), so a name
counts as present when some printable string of the module ends with it.

Run as a script to list which of our double's names one wheel lacks:
    python -m tests.trt_double.bindings_names 11.4.0.106
"""
from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

DOWNLOAD_TIMEOUT_S = 300
PRINTABLE = re.compile(rb"[\x20-\x7e]{3,}")


def cache_dir() -> Path:
    return Path(os.environ.get("TRT_BINDINGS_CACHE", Path.home() / ".cache" / "sd-unet-trt" / "bindings"))


def bindings_wheel(version: str, cuda: str = "cu12") -> Path:
    """The bindings wheel of one TensorRT version for this Python, downloaded once into the cache."""
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    package = f"tensorrt_{cuda}_bindings-{version}-"
    found = sorted(folder.glob(f"{package}*.whl"))
    if not found:
        result = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                 "--dest", str(folder), f"tensorrt-{cuda}-bindings=={version}"],
                                capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        found = sorted(folder.glob(f"{package}*.whl"))
        if result.returncode or not found:
            raise RuntimeError(f"could not download tensorrt-{cuda}-bindings=={version}: {result.stderr[-2000:]}")
    return found[-1]


class WheelNames:
    """Every printable string of the compiled module, one per line, plus the wheel's Python identifiers."""

    def __init__(self, wheel: Path):
        self.wheel = wheel
        chunks: list[bytes] = []
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if info.filename.endswith(".so") or info.filename.endswith(".pyd"):
                    chunks.extend(PRINTABLE.findall(archive.read(info)))
                elif info.filename.endswith(".py"):
                    chunks.extend(re.findall(rb"[A-Za-z_][A-Za-z0-9_]*", archive.read(info)))
        self._text = b"\n" + b"\n".join(chunks) + b"\n"

    def __contains__(self, name: str) -> bool:
        return (name.encode() + b"\n") in self._text

    def missing(self, names: set[str]) -> set[str]:
        return {n for n in names if n not in self}


def double_surface(module: ModuleType) -> set[str]:
    """Every public name the double defines: module attributes, and public members of its classes."""
    names: set[str] = {"__version__"}
    for attr, value in vars(module).items():
        if attr.startswith("_"):
            continue
        if not str(getattr(value, "__module__", "")).startswith(module.__name__):
            continue  # imported helpers (numpy, enum, ...) are not part of the surface
        names.add(attr)
        if inspect.isclass(value):
            names |= _class_members(value)
    return names


def _class_members(cls: type) -> set[str]:
    names: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith(cls.__module__.rsplit(".", 1)[0]) or klass.__name__ == "_Strict":
            continue
        for attr, value in vars(klass).items():
            if attr.startswith("_"):
                continue
            names.add(attr)
            if inspect.isclass(value):
                names |= _class_members(value)
    if hasattr(cls, "__members__"):
        names |= set(cls.__members__)
    return names


def trt_chains(source: str) -> set[tuple[str, ...]]:
    """Dotted names rooted at the `trt` module in Python source: trt.BuilderFlag.FP16 -> (BuilderFlag, FP16)."""
    chains = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            parts, inner = [], node
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id == "trt":
                chains.add(tuple(reversed(parts)))
    return chains


def attribute_names(source: str) -> set[str]:
    """Every `.name` accessed in the source, on anything."""
    return {node.attr for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Attribute)}


if __name__ == "__main__":
    from tests.trt_double import fake_tensorrt

    wheel = WheelNames(bindings_wheel(sys.argv[1] if len(sys.argv) > 1 else "10.16.1.11"))
    print(wheel.wheel.name)
    print("missing:", sorted(wheel.missing(double_surface(fake_tensorrt))) or "none")
