"""The three readers of our tagged JSON formats (the manifest index, a weights record, a torch engine's
record) read through one helper, atomic.read_tagged_json: any damaged or foreign document is their own
error in one line, never another exception (a deeply nested one was a RecursionError for two of them)."""
from __future__ import annotations

import zipfile

import pytest

from sd_unet_trt.trt_core.atomic import ForeignJson, NestedTooDeeply, UnreadableJson, read_tagged_json
from sd_unet_trt.trt_core.backends.base import EngineFileError
from sd_unet_trt.trt_core.backends.torch_compiled import engine_file
from sd_unet_trt.trt_core.manifest import Manifest, ManifestError
from sd_unet_trt.trt_core.weights import WeightsRecord

BROKEN = {
    "truncated": b'{"format": ',
    "not utf-8": b"\xff\xfe\x00garbage",
    "nested": b"[" * 100_000 + b"]" * 100_000,
    "foreign tag": b'{"format": "something-else", "schema": "something-else"}',
    "not an object": b'["format"]',
}


def manifest_error(tmp_path, content: bytes) -> str:
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(ManifestError) as e:
        Manifest(tmp_path).entries()
    return str(e.value)


def weights_error(tmp_path, content: bytes) -> str:
    (tmp_path / "record.json").write_bytes(content)
    with pytest.raises(ValueError) as e:
        WeightsRecord.load(tmp_path / "record.json")
    return str(e.value)


def engine_error(tmp_path, content: bytes) -> str:
    path = tmp_path / "engine.torch"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(engine_file.RECORD, content)
        archive.writestr(engine_file.ARTIFACT, b"")
        archive.writestr(engine_file.WEIGHTS, b"")
    with pytest.raises(EngineFileError) as e:
        engine_file.read_metadata(path)
    return str(e.value)


@pytest.mark.parametrize("reader, words", [
    (manifest_error, {"truncated": "is corrupt", "not utf-8": "is corrupt", "nested": "nested too deeply",
                      "foreign tag": "not an engine manifest", "not an object": "not an engine manifest"}),
    (weights_error, {"truncated": "is unreadable", "not utf-8": "is unreadable", "nested": "is unreadable",
                     "foreign tag": "not a weights record", "not an object": "not a weights record"}),
    (engine_error, {"truncated": "damaged engine record", "not utf-8": "damaged engine record",
                    "nested": "damaged engine record", "foreign tag": "has engine format 'something-else'",
                    "not an object": "has engine format None"}),
], ids=["manifest", "weights record", "torch engine record"])
@pytest.mark.parametrize("case", BROKEN)
def test_each_reader_words_a_broken_document_as_its_own_error(tmp_path, reader, words, case):
    message = reader(tmp_path, BROKEN[case])
    assert words[case] in message and "\n" not in message


def test_the_helper_returns_the_object_and_names_what_it_found(tmp_path):
    path = tmp_path / "doc.json"
    path.write_text('{"format": "ours/1", "x": 1}')
    assert read_tagged_json(path, "format", "ours/1") == {"format": "ours/1", "x": 1}
    with pytest.raises(ForeignJson) as e:
        read_tagged_json(path, "format", "ours/2")
    assert e.value.found == "ours/1"
    with pytest.raises(NestedTooDeeply):
        read_tagged_json(BROKEN["nested"], "format", "ours/1")
    with pytest.raises(UnreadableJson):
        read_tagged_json(BROKEN["truncated"], "format", "ours/1")
    with pytest.raises(FileNotFoundError):  # the caller words a missing file
        read_tagged_json(tmp_path / "missing.json", "format", "ours/1")
