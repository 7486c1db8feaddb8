"""One sha256-of-a-file for the project: checkpoints (with progress, they are GB) and engine files."""
from __future__ import annotations

import hashlib

from sd_unet_trt.trt_core import file_digest
from sd_unet_trt.trt_core.file_digest import digest_of, file_sha256
from sd_unet_trt.trt_core.identity import checkpoint_of_file


def test_checkpoints_and_engines_are_hashed_alike_with_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(file_digest, "CHUNK", 1000)  # several chunks from a small file
    path = tmp_path / "model.safetensors"
    content = bytes(range(256)) * 10 + b"tail"
    path.write_bytes(content)
    seen = []
    expected = hashlib.sha256(content).hexdigest()
    assert file_sha256(path, lambda phase, fraction: seen.append((phase, fraction))) == expected
    assert [fraction for _, fraction in seen] == [1000 / 2564, 2000 / 2564, 1.0]
    assert {phase for phase, _ in seen} == {"hashing model.safetensors"}
    assert checkpoint_of_file(path).sha256 == digest_of(path) == expected
