"""The commands but the demo and `ui` (ui/command.py): build, verify, export, list, remove, recover, export-triton."""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from sd_unet_trt.models.families import TINY, family_named
from sd_unet_trt.models.unet import seeded_unet
from sd_unet_trt.trt_core.backends import best_backend, get_backend
from sd_unet_trt.trt_core.backends.base import Backend
from sd_unet_trt.trt_core.catalog import built_file, catalog
from sd_unet_trt.trt_core.checkpoint_file import FileStamp, family_of_file, unet_from_file
from sd_unet_trt.trt_core.cli.errors import CliError, one_line
from sd_unet_trt.trt_core.controlnet.family import is_controlnet_entry
from sd_unet_trt.trt_core.estimate import estimate, human_bytes, human_seconds
from sd_unet_trt.trt_core.export import export_onnx
from sd_unet_trt.trt_core.export_folder import writable
from sd_unet_trt.trt_core.export_process import progress_line
from sd_unet_trt.trt_core.identity import checkpoint_of_file, checkpoint_of_module
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import Profile, Range, presets_for
from sd_unet_trt.trt_core.progress import ProgressFn
from sd_unet_trt.trt_core.unet_source import CheckpointUNet, ModuleUNet
from sd_unet_trt.trt_core.verify import compare
from sd_unet_trt.trt_core.workspace import Workspace

TINY_NAME = "tiny-builtin"


def built_line(entry) -> str:
    """What a build prints last: the engine, its size and time, and how it was checked."""
    checked = (f"error vs PyTorch {entry.accuracy['max_rel']:.2e} (relative)" if entry.accuracy
               else f"not checked against PyTorch ({entry.details.get('unverified', 'no reason recorded')})")
    if "loop_rel_error" in entry.accuracy:
        checked += f"; over a {entry.accuracy['loop_steps']:.0f}-step loop {entry.accuracy['loop_rel_error']:.1%}"
    return f"built {entry.id}: {entry.file_size / 2**20:.1f} MiB in {entry.build_seconds:.1f} s, {checked}"


def progress_bar(desc: str) -> tuple[ProgressFn, tqdm]:
    bar = tqdm(total=100, desc=desc, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}", leave=True)

    def update(phase: str, fraction: float) -> None:
        bar.n = round(100 * fraction)
        bar.set_postfix_str(phase, refresh=True)
    return update, bar


def tiny_model() -> ModuleUNet:
    unet = seeded_unet(TINY.unet_config())
    return ModuleUNet(unet, checkpoint_of_module(unet, TINY_NAME), TINY)


def load_checkpoint(path: Path, prediction: str) -> CheckpointUNet:
    """A checkpoint file's UNet as a build source: hashed, its family read off its tensors' shapes."""
    if not path.is_file():
        raise CliError(f"no checkpoint at {path}")
    stamp = FileStamp.of(path)
    family = family_of_file(path, prediction)
    update, bar = progress_bar("hashing")
    checkpoint = checkpoint_of_file(path, update)
    bar.close()
    return CheckpointUNet(path, checkpoint, family, stamp, prediction)


def build_source(args) -> ModuleUNet | CheckpointUNet:
    return load_checkpoint(Path(args.checkpoint), args.prediction) if args.checkpoint else tiny_model()


def profile_from_args(args, family) -> Profile:
    if args.preset is not None:
        presets = presets_for(family)
        if not 0 <= args.preset < len(presets):
            raise CliError(f"--preset must be 0-{len(presets) - 1} for {family.label}: " + "; ".join(
                f"{i}: {p.name}" for i, p in enumerate(presets)))
        return presets[args.preset].profile
    if args.profile is None:
        return presets_for(family)[0].profile
    try:
        b, h, w, t = ([int(v) for v in part.split(":")] for part in args.profile.split(","))
        profile = Profile(Range(*b), Range(*h), Range(*w), Range(*t))
    except (ValueError, TypeError):
        raise CliError("--profile takes BATCH,HEIGHT,WIDTH,TOKENS each as min:opt:max, "
                       "e.g. 1:1:4,512:512:768,512:512:768,75:75:150") from None
    return profile.validate()


def estimate_line(source, profile: Profile, backend: Backend, precision: str, device: str, workspace: Workspace) -> str:
    est = estimate(source.parameters(), source.family, profile, precision, backend.name, device, workspace, source.checkpoint)
    line = (f"estimate: {human_bytes(est.disk_bytes)} on disk, about {human_bytes(est.memory_bytes)} of "
            f"{est.memory_kind}, about {human_seconds(est.build_seconds)} ({est.time_basis})")
    native = source.family.native_px
    if device == "cpu" and max(profile.height.max, profile.width.max) > 2 * native:
        line += (f"\nwarning: the checks run the UNet at the profile's largest shape ({profile.width.max}x"
                 f"{profile.height.max} px, {profile.rows.max} rows); on the CPU that can take many minutes")
    return line


def cmd_build(args) -> int:
    """Export the checkpoint's UNet, check it, build an engine for a profile, check that, register it."""
    source = build_source(args)
    backend = get_backend(args.backend) if args.backend else best_backend(args.device)
    backend.require()
    profile = profile_from_args(args, source.family).validate()
    workspace = Workspace(Path(args.dir))
    inputs = ", with ControlNet inputs" if args.controlnet else ""
    print(f"building with {backend.name} {args.precision}{inputs}, {profile.label()}")
    print(estimate_line(source, profile, backend, args.precision, args.device, workspace), flush=True)
    update, bar = progress_bar(f"{backend.name} {profile.label()}")
    try:
        entry = build_engine(source, profile, backend, workspace, precision=args.precision, device=args.device,
                             progress=update, controlnet=args.controlnet)
    finally:
        bar.close()
    print(built_line(entry))
    for note in entry.details.get("notes", []):
        print(f"  note: {note}")
    return 0


def cmd_list(args) -> int:
    """List the engines of a workspace and whether each can run here."""
    workspace = Workspace(Path(args.dir))
    workspace.sweep()  # every command starts by clearing what killed builds left
    items = catalog(workspace, args.device)
    if not items:
        print(f"no engines in {workspace.engine_dir}")
    for item in items:
        e = item.entry
        targets = e.details.get("targets")
        built_for = f"{e.gpu_arch} ({', '.join(targets)})" if targets else e.gpu_arch
        print(f"{item.status.state:10} {e.id}\n        {e.checkpoint.name} [{e.checkpoint.short_hash}] {e.family}, "
              f"{e.backend} {e.backend_version} {e.precision} for {built_for}, {e.profile.label()}, "
              f"{e.file_size / 2**20:.1f} MiB" + (f"\n        {item.status.reason}" if item.status.reason else "")
              + (f"\n        not checked against PyTorch: built where it could not run (`verify"
                 f"{' --controlnet FILE' if is_controlnet_entry(e) else ''}` checks it on a GPU)"
                 if e.details.get("unverified") else ""))
    manifest = workspace.manifest()
    manifest.entries()
    for problem in manifest.problems:  # entries the manifest holds but no listing can use
        print(f"skipped: {one_line(problem)}")
    return 0


def checkpoint_to_serve(checkpoints: list[CheckpointId], prefix: str | None, engine_dir) -> str:
    """The sha256 that `--checkpoint`'s prefix names among the checkpoints with engines; without
    one, the only such checkpoint (a new user's workspace holds one), else a line listing them."""
    names = {c.sha256: c.name for c in checkpoints}
    matches = [sha256 for sha256 in names if sha256.startswith(prefix or "")]
    if len(matches) == 1:
        return matches[0]
    if prefix is not None:
        raise CliError(f"{len(matches)} checkpoints with engines in {engine_dir} match {prefix!r}")
    if not names:
        raise CliError(f"no checkpoint has engines in {engine_dir}; build one first")
    choices = ", ".join(f"{sha256[:10]} ({names[sha256]})" for sha256 in sorted(names))
    raise CliError(f"{len(names)} checkpoints have engines in {engine_dir}; name one with --checkpoint: {choices}")


def cmd_export_triton(args) -> int:
    """Write a Triton Inference Server model repository serving a checkpoint's engines (Python
    backend, dynamic batching; a new version on every export); docs/SERVING.md says how to serve it."""
    from sd_unet_trt.trt_core.serving.repository import export_triton

    workspace = Workspace(Path(args.dir))
    checkpoints = [e.checkpoint for e in workspace.manifest().entries() if not is_controlnet_entry(e)]
    sha256 = checkpoint_to_serve(checkpoints, args.checkpoint, workspace.engine_dir)
    folder = export_triton(workspace, sha256, Path(args.out), args.device, args.instances)
    versions = sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())
    print(f"wrote {folder} (version {versions[-1]})")
    return 0


def cmd_remove(args) -> int:
    """Delete an engine: its file, its sidecar and runtime caches, and its manifest entry."""
    workspace = Workspace(Path(args.dir))
    workspace.sweep()
    print(workspace.manifest().remove(args.id).line())
    return 0


def cmd_recover(args) -> int:
    """Rebuild the manifest from the engines' sidecar files; keep the broken one beside it."""
    workspace = Workspace(Path(args.dir))
    if not workspace.engine_dir.is_dir() and (Path(args.dir) / "manifest.json").is_file():
        raise CliError(f"{args.dir} is an engine folder; --dir takes the workspace that holds it: "
                       f"--dir {Path(args.dir).resolve().parent}")
    swept = workspace.sweep()
    report = workspace.manifest().recover()
    print(f"manifest rebuilt with {len(report.entries)} engines"
          + (f"; the broken one is kept as {report.kept}" if report.kept else "")
          + (f"; removed {len(swept)} leftovers of killed builds" if swept else ""))
    for line in report.notes:
        print(f"  {line}")
    return 0


def cmd_export(args) -> int:
    """Export a checkpoint file's UNet to ONNX (the WebUI runs this in a child process)."""
    path = Path(args.checkpoint)
    if not path.is_file():
        raise CliError(f"no checkpoint at {path}")
    if args.expect_stamp and args.expect_stamp != "{0.size}:{0.mtime_ns}".format(FileStamp.of(path)):
        raise CliError(f"{path.name} changed on disk since it was hashed; load it again and retry")
    family = family_named(args.family) if args.family else family_of_file(path, args.prediction)
    sha256 = args.sha256 or checkpoint_of_file(path).sha256
    out = Path(args.out) if args.out else Workspace(Path(args.dir)).onnx_folder(CheckpointId.of(sha256, path.stem),
                                                                                 family, args.weights)
    writable(out)  # refused before the UNet is read, not after
    if args.progress_lines:
        def update(phase, fraction):
            print(progress_line(phase, fraction), flush=True)
        bar = None
    else:
        update, bar = progress_bar("export")
    try:
        unet = unet_from_file(path, family)
        if args.expect_stamp and args.expect_stamp != "{0.size}:{0.mtime_ns}".format(FileStamp.of(path)):
            raise CliError(f"{path.name} changed on disk while it was read; load it again and retry")
        result = export_onnx(unet, family, out, weights=args.weights, device=args.device, progress=update,
                             source_label=f"checkpoint file {path.name}", checkpoint_sha256=sha256)
    finally:  # the bar ends its line, so an error is a line of its own
        if bar is not None:
            bar.close()
    if bar is not None:
        print(f"exported {path.name} ({family.label}) to {result.onnx_path} in {result.seconds:.1f} s")
    return 0


def cmd_verify(args) -> int:
    """Check every engine of the tiny model (or of --checkpoint, or --controlnet) that can run here against PyTorch."""
    source = build_source(args)
    checkpoint, family = source.checkpoint, source.family
    workspace = Workspace(Path(args.dir))
    workspace.sweep()
    items = [i for i in catalog(workspace, args.device) if i.entry.checkpoint.sha256 == checkpoint.sha256]
    runnable = [i for i in items if i.status.ready]
    if not runnable:
        print(f"nothing to check: {len(items)} engines of {checkpoint.name} in {workspace.engine_dir}, none can run "
              f"here" + "".join(f"\n  {i.status.state}: {i.entry.id}: {i.status.reason}" for i in items))
        return 0
    unet = source.load(torch.float32, args.device)
    failures = 0
    for item in runnable:
        e = item.entry
        try:
            engine = get_backend(e.backend).load(built_file(workspace.manifest(), e), e.id, family, e.profile,
                                                 args.device)
            try:
                accuracy = compare(engine, unet, family, e.profile, e.precision, device=args.device)
            finally:
                engine.close()
        except Exception as e2:  # a damaged engine is one line, and the others are still checked
            failures += 1
            print(f"FAIL {e.id}: cannot run it: {one_line(e2)}")
            continue
        failures += not accuracy.passed
        print(f"{'ok  ' if accuracy.passed else 'FAIL'} {e.id}: relative error {accuracy.max_rel:.2e} "
              f"(allowed {accuracy.tolerance:.0e})")
    return 1 if failures else 0
