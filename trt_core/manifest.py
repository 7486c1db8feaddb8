"""The manifest: which engines exist, for which checkpoint, backend version and GPU.

`manifest.json` is an index. Every engine file also has a sidecar `<file>.json` holding its own
entry, written before the index, so a corrupt or lost index can be rebuilt from the sidecars
(`Manifest.recover`). All writes are atomic and taken under a file lock shared by processes.
"""
from __future__ import annotations

import glob
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from filelock import FileLock, Timeout

from sd_unet_trt.errors import UserError
from sd_unet_trt.trt_core.atomic import (TEMP_MARK, ForeignJson, NestedTooDeeply, UnreadableJson, atomic_write_bytes,
                                         atomic_write_text, read_tagged_json, remove_stale_temps)
from sd_unet_trt.trt_core.engine_files import (is_runtime_cache, is_sidecar_of, is_weights_record,
                                               why_not_the_engine_built)
from sd_unet_trt.trt_core.manifest_schema import entry_problem
from sd_unet_trt.trt_core.profiles import Profile, ProfileError

SCHEMA = "sd-unet-engines"
SCHEMA_VERSION = 1
INDEX_NAME = "manifest.json"
SIDECAR_SUFFIX = ".json"
WEIGHTS_DIR = "weights"  # one record per weights digest (trt_core.weights), shared by its engines
LOCK_TIMEOUT_S = 60
PORTABLE_ARCH = "portable"  # gpu_arch of an engine built for several GPUs


def _keep_previous(path: Path) -> Path | None:
    """A second name for the engine file a rebuild replaces, to put it back if registering fails."""
    if path.is_symlink() or not path.is_file():  # a link is no engine of ours to keep
        return None
    previous = path.with_name(f"{TEMP_MARK}{os.getpid()}-{path.name}.previous")
    try:
        os.link(path, previous)
    except OSError:  # no hard links on this file system: a failed rebuild then loses the old engine
        return None
    return previous


class ManifestError(UserError, RuntimeError):
    """The manifest cannot be used as it is; the message says how to recover. Nothing was changed."""


@dataclass(frozen=True)
class CheckpointId:
    sha256: str  # of the checkpoint file (or of a module's state dict)
    short_hash: str  # the WebUI's: the first 10 hex digits of the sha256
    name: str
    weights: str = ""  # digest of the exported UNet weights (trt_core.weights); "" before it was recorded

    @classmethod
    def of(cls, sha256: str, name: str) -> "CheckpointId":
        return cls(sha256, sha256[:10], name)


@dataclass
class EngineEntry:
    id: str
    checkpoint: CheckpointId
    family: str
    backend: str
    backend_version: str
    gpu_arch: str
    profile: Profile
    precision: str
    file: str  # a plain name inside the engine folder
    file_size: int = 0
    file_sha256: str = ""  # of the engine file as built: nothing else is ever loaded (torch's files are code)
    build_seconds: float = 0.0
    created: str = ""
    accuracy: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["profile"] = self.profile.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "EngineEntry":
        problem = entry_problem(data)
        name = data.get("id") if isinstance(data, dict) and isinstance(data.get("id"), str) else "?"
        if problem:
            raise ValueError(f"malformed entry {name[:80]!r}: {problem}")
        try:
            fields = dict(data)
            fields["checkpoint"] = CheckpointId(**fields["checkpoint"])
            fields["profile"] = Profile.from_dict(fields["profile"])
            return cls(**fields)
        except (KeyError, TypeError, ProfileError) as e:
            raise ValueError(f"malformed entry {name[:80]!r}: {e}") from None


def engine_id(checkpoint: CheckpointId, family: str, backend: str, precision: str, profile: Profile) -> str:
    return f"{checkpoint.short_hash}-{family}-{backend}-{precision}-{profile.slug()}"


@dataclass
class EngineStatus:
    state: str  # "ready", "stale" (rebuild it), "missing", "cannot-run" (fine, but not on this machine)
    reason: str = ""

    @property
    def ready(self) -> bool:
        return self.state == "ready"


class Manifest:
    def __init__(self, engine_dir: Path | str):
        self.dir = Path(engine_dir)
        self.path = self.dir / INDEX_NAME
        self.problems: list[str] = []  # entries skipped at the last read, and why

    def _lock(self) -> FileLock:
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.dir / ".manifest.lock"), timeout=LOCK_TIMEOUT_S)

    def _locked(self):
        lock = self._lock()
        try:
            lock.acquire()
        except Timeout:
            raise ManifestError(f"{self.path} is locked by another process for over {LOCK_TIMEOUT_S} s; "
                                f"if none is running, delete {lock.lock_file}") from None
        return lock

    def file_path(self, entry: EngineEntry) -> Path:
        """The entry's file, refusing any path that leaves the engine folder. The folders on the way
        are resolved, the file itself is not: a symbolic link put in its place stays the entry's file
        (engine_status says what it is; `remove` deletes the link), and is never followed."""
        root = self.dir.resolve()
        name = Path(entry.file)
        folder = (root / name).parent.resolve()
        if name.is_absolute() or ".." in name.parts or (folder != root and root not in folder.parents):
            raise ValueError(f"entry {entry.id!r} points outside {root}: {entry.file!r}")
        return folder / name.name

    def recover_hint(self) -> str:
        # `--dir` takes the workspace, the folder that holds this engine folder
        return (f"run `python -m sd_unet_trt recover --dir {self.dir.resolve().parent}` to rebuild it from the "
                f"engines' sidecar files")

    def _read_index(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        recover = self.recover_hint()
        try:
            data = read_tagged_json(self.path, "schema", SCHEMA)
        except NestedTooDeeply:
            raise ManifestError(f"{self.path} is nested too deeply to be a manifest; {recover}") from None
        except (OSError, UnreadableJson) as e:
            raise ManifestError(f"{self.path} is corrupt ({e}); {recover}") from None
        except ForeignJson:
            raise ManifestError(f"{self.path} is not an engine manifest of this extension; move it away or "
                                f"{recover}") from None
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ManifestError(f"{self.path} has schema version {data.get('schema_version')!r}, this extension "
                                f"reads {SCHEMA_VERSION}; update the extension or {recover}")
        if not isinstance(data.get("entries"), list):
            raise ManifestError(f"{self.path} has no entry list; {recover}")
        return data["entries"]

    def _parse(self, raw: Iterable[Any]) -> list[EngineEntry]:
        entries, self.problems = [], []
        for item in raw:
            try:
                entry = EngineEntry.from_dict(item)
                self.file_path(entry)
            except (ValueError, TypeError) as e:
                self.problems.append(str(e))
                continue
            entries.append(entry)
        return entries

    def entries(self) -> list[EngineEntry]:
        """Every well-formed entry; malformed ones are skipped and listed in `problems`."""
        return self._parse(self._read_index())

    def get(self, entry_id: str) -> EngineEntry | None:
        return next((e for e in self.entries() if e.id == entry_id), None)

    def _write(self, entries: list[EngineEntry]) -> None:
        data = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "entries": [e.to_dict() for e in entries]}
        atomic_write_text(self.path, json.dumps(data, indent=1))

    def in_the_way(self, entry_id: str, file_name: str) -> str:
        """Why a new engine of this id may not take `file_name`'s place ("" when nothing is there,
        or what is there is provably the earlier build of that id: a link, or the file whose sha256
        the index or its sidecar recorded)."""
        path = self.dir / file_name
        if path.is_symlink() or not path.exists():
            return ""
        known = [e.file_sha256 for e in self._parse(self._read_index()) if e.id == entry_id]
        sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
        try:
            known.append(EngineEntry.from_dict(json.loads(sidecar.read_text(encoding="utf-8"))).file_sha256)
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            pass  # no sidecar of ours: only the index can vouch for the file
        if any(not why_not_the_engine_built(path, sha) for sha in known if sha):
            return ""
        why = why_not_the_engine_built(path, known[0] if known else "") if known else "no engine of this id records it"
        return f"{path} is in the way of the new engine ({why}); move it aside, then build again"

    def add(self, entry: EngineEntry, staged: Path | None = None) -> None:
        """Register an engine (replacing an entry of the same id). With `staged`, the engine is moved
        into place here, under the lock, between its sidecar and the index: a process killed on the
        way leaves a sidecar without a file, or a file with its sidecar that `recover` and `prune`
        register; never an engine nothing knows about. On failure, what was there before is back."""
        path = self.file_path(entry)
        if staged is None and not path.is_file():
            raise ValueError(f"cannot register {entry.id}: {path} does not exist")
        entry.created = entry.created or time.strftime("%Y-%m-%dT%H:%M:%S")
        with self._locked():
            in_the_way = self.in_the_way(entry.id, entry.file) if staged is not None else ""
            if in_the_way:  # never replace a file this project cannot prove it wrote
                raise ManifestError(in_the_way)
            sidecar = self.sidecar(entry)
            old_sidecar = sidecar.read_bytes() if sidecar.is_file() else None
            previous = _keep_previous(path) if staged is not None else None
            try:
                atomic_write_text(sidecar, json.dumps(entry.to_dict(), indent=1))
                if staged is not None:
                    os.replace(staged, path)
                entries = [e for e in self._parse(self._read_index()) if e.id != entry.id]
                self._write(entries + [entry])
            except BaseException:
                if old_sidecar is None:
                    sidecar.unlink(missing_ok=True)
                else:
                    atomic_write_bytes(sidecar, old_sidecar)
                if previous is not None:
                    os.replace(previous, path)
                elif staged is not None:
                    path.unlink(missing_ok=True)
                raise
            finally:
                if previous is not None:
                    previous.unlink(missing_ok=True)

    def weights_record_path(self, weights_digest: str) -> Path:
        return self.dir / WEIGHTS_DIR / f"{weights_digest[:16]}.json"

    def sidecar(self, entry: EngineEntry) -> Path:
        return self.file_path(entry).with_name(self.file_path(entry).name + SIDECAR_SUFFIX)

    def companions(self, entry: EngineEntry) -> list[Path]:
        """Files kept beside an engine that are provably its own: its sidecar (describing this entry)
        and a runtime cache per GPU (by the name they are written under); a user's file named after
        the engine is none of them."""
        path, sidecar = self.file_path(entry), self.sidecar(entry)
        caches = [p for p in path.parent.glob(glob.escape(path.name) + ".*") if is_runtime_cache(path, p)]
        return sorted(caches + ([sidecar] if is_sidecar_of(sidecar, entry.id, entry.file) else []))

    def _remove_files(self, entry: EngineEntry) -> dict[str, str]:
        """Delete the entry's engine file and companions where they are provably ours; the files left
        where they are (a name -> why)."""
        kept = {}
        path, sidecar = self.file_path(entry), self.sidecar(entry)
        if path.is_symlink():  # a link put in the engine's place goes with its entry, its target untouched
            path.unlink()
        elif path.exists():
            why = why_not_the_engine_built(path, entry.file_sha256)
            if why:
                kept[path.name] = why
            else:
                path.unlink()
        companions = self.companions(entry)
        for companion in companions:
            companion.unlink(missing_ok=True)
        if (sidecar.exists() or sidecar.is_symlink()) and sidecar not in companions:
            kept[sidecar.name] = "it does not describe this engine"
        return kept

    def remove(self, entry_id: str) -> "Removal":
        """Delete an engine: its index entry, its file and companions, and the weights record no
        other engine shares; a file there that is not provably ours is kept and named."""
        with self._locked():
            entries = self._parse(self._read_index())
            entry = next((e for e in entries if e.id == entry_id), None)
            if entry is None:
                raise KeyError(f"no engine {entry_id!r} in {self.path}")
            kept = [e for e in entries if e.id != entry_id]
            self._write(kept)
            left = self._remove_files(entry)
            digest = entry.checkpoint.weights
            record = self.weights_record_path(digest) if digest else None
            if record is not None and not any(e.checkpoint.weights == digest for e in kept):
                if is_weights_record(record, digest):
                    record.unlink()
                elif record.exists() or record.is_symlink():
                    left[f"{record.parent.name}/{record.name}"] = "it is not the weights record of this engine"
        return Removal(entry, left)

    def prune(self) -> list[EngineEntry]:
        """Drop entries whose engine file is gone, register engines a killed build left with only their
        sidecar, and clear temp files of killed builds. Returns the entries dropped."""
        with self._locked():
            remove_stale_temps(self.dir)
            entries = self._parse(self._read_index())
            gone = [e for e in entries if not self.file_path(e).is_file()]
            known = {e.id for e in entries}
            adopted = [e for e in self._sidecar_entries()[0] if e.id not in known]
            if gone or adopted:
                self._write([e for e in entries if e not in gone] + adopted)
                for e in gone:
                    for path in self.companions(e):
                        path.unlink(missing_ok=True)
        return gone

    def _sidecar_entries(self) -> tuple[list[EngineEntry], list[str]]:
        """Entries of the sidecars whose engine file is there, and what is wrong with the others."""
        found, problems = [], []
        for sidecar in sorted(self.dir.glob(f"*{SIDECAR_SUFFIX}")):
            if sidecar.name == INDEX_NAME:
                continue
            try:
                entry = EngineEntry.from_dict(json.loads(sidecar.read_text(encoding="utf-8")))
                path = self.file_path(entry)
            except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
                problems.append(f"{sidecar.name}: {e}")
                continue
            if sidecar != self.sidecar(entry):
                problems.append(f"{sidecar.name}: describes {entry.file}, not its own engine")
            elif not path.is_file():
                problems.append(f"{sidecar.name}: its engine file {entry.file} is gone")
            else:
                found.append(entry)
        return found, problems

    def recover(self) -> "RecoverReport":
        """Rebuild the index from the sidecars and the index's own readable entries. It never leaves
        less than it found: a broken index is copied aside before the new one replaces it, and if
        the new one cannot be written the old one stays."""
        with self._locked():
            kept, indexed = None, []
            if self.path.exists():
                try:
                    indexed = self._parse(self._read_index())
                except ManifestError:
                    kept = self.path.with_name(f"{INDEX_NAME}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
                    try:
                        atomic_write_bytes(kept, self.path.read_bytes())
                    except OSError as e:
                        raise ManifestError(f"could not keep a copy of the broken {INDEX_NAME} as {kept.name} "
                                            f"({e.strerror or e}); nothing was changed") from None
            found, notes = self._sidecar_entries()
            notes += self.problems
            by_id = {e.id: e for e in indexed if self.file_path(e).is_file()}
            by_id.update({e.id: e for e in found})
            registered = {e.file for e in by_id.values()}
            for path in sorted(self.dir.iterdir()):
                if path.is_file() and path.suffix != SIDECAR_SUFFIX and not path.name.startswith((".", INDEX_NAME)) \
                        and path.name not in registered and not any(path.name.startswith(f + ".") for f in registered):
                    notes.append(f"{path.name}: a file no sidecar describes (from an earlier version, or copied "
                                 f"in); delete it or rebuild that engine")
            try:
                self._write(list(by_id.values()))
            except BaseException:
                if kept is not None:
                    kept.unlink(missing_ok=True)
                raise
        return RecoverReport(list(by_id.values()), kept, notes)


@dataclass
class Removal:
    entry: EngineEntry
    kept: dict[str, str]  # files left where they were, not provably the engine's (name -> why)

    def line(self, verb: str = "removed") -> str:
        said = f"{verb} {self.entry.id}" + ("" if self.entry.file in self.kept else f" and {self.entry.file}")
        return said + "".join(f"; kept {name}: {why}" for name, why in self.kept.items())


@dataclass
class RecoverReport:
    entries: list[EngineEntry]
    kept: Path | None  # the copy of a broken index
    notes: list[str]  # sidecars and files that could not be registered, and why


def engine_status(entry: EngineEntry, manifest: Manifest, backend_version: str | None, device_arch: str | None) -> EngineStatus:
    """Ready, or why not: the file is gone, or it was built for another backend version or GPU.
    A None version/arch means the backend is not installed here. A PORTABLE_ARCH engine runs on
    several GPUs: its backend's own check of the file says which (Backend.file_problem)."""
    try:
        path = manifest.file_path(entry)
    except ValueError as e:
        return EngineStatus("missing", str(e))
    if path.is_symlink():
        return EngineStatus("missing", f"{entry.file} is a symbolic link (to {os.readlink(path)}), not the engine "
                                       f"file that was built; `remove {entry.id}` drops the entry and the link, "
                                       f"never what it points to")
    present = path.is_file()
    if not present:
        return EngineStatus("missing", f"file {entry.file} is gone")
    if backend_version is None:
        return EngineStatus("stale", f"{entry.backend} is not installed here")
    if entry.backend_version != backend_version:
        return EngineStatus("stale", f"built with {entry.backend} {entry.backend_version}, "
                                     f"this machine has {backend_version}; rebuild it")
    if device_arch is not None and entry.gpu_arch not in (device_arch, PORTABLE_ARCH):
        return EngineStatus("stale", f"built for {entry.gpu_arch}, this GPU is {device_arch}; rebuild it")
    if not entry.checkpoint.weights:
        return EngineStatus("stale", "built by an earlier version that did not record which weights it holds (it may "
                                     "hold a LoRA that was merged into the model when it was exported); rebuild it")
    return EngineStatus("ready")
