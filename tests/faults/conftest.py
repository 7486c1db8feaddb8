"""Fixtures shared by the fault tests."""
from __future__ import annotations

import shutil

import pytest

from tests.faults.helpers import killed_build


@pytest.fixture(scope="module")
def built_once(tmp_path_factory):
    """A workspace with one real engine (tiny model, ONNX Runtime, fp32), copied for each test."""
    root = tmp_path_factory.mktemp("built")
    assert killed_build("none", root).returncode == 0
    return root


@pytest.fixture
def workspace(built_once, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(built_once, root)
    return root
