"""The ControlNet commands: `build-controlnet` (an engine of a ControlNet file) and `export-controlnet`
(its ONNX; what a build runs in a child process, trt_core/controlnet/source.py)."""
from __future__ import annotations

from pathlib import Path

import torch

from sd_unet_trt.trt_core.backends import best_backend, get_backend
from sd_unet_trt.trt_core.checkpoint_file import FileStamp
from sd_unet_trt.trt_core.cli.commands import built_line, estimate_line, progress_bar
from sd_unet_trt.trt_core.cli.errors import CliError
from sd_unet_trt.trt_core.controlnet.build import build_controlnet_engine
from sd_unet_trt.trt_core.controlnet.family import ControlNetFamily
from sd_unet_trt.trt_core.controlnet.source import controlnet_file_sha256, load_controlnet
from sd_unet_trt.trt_core.export_folder import writable
from sd_unet_trt.trt_core.export_process import progress_line
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.workspace import Workspace

DEFAULT_BATCH, DEFAULT_TOKENS = "1:1:2", "75:75:150"


def dimension(text: str, option: str) -> Range:
    """"512" (static) or "512:512:768" (min:opt:max)."""
    try:
        values = [int(v) for v in text.split(":")]
    except ValueError:
        values = []
    if len(values) not in (1, 3):
        raise CliError(f"{option} takes a number or MIN:OPT:MAX, e.g. 512 or 512:512:768; got {text!r}")
    return Range(*(values * 3 if len(values) == 1 else values))


def controlnet_profile(args, family: ControlNetFamily) -> Profile:
    native = str(family.native_px)
    return Profile(dimension(args.batch or DEFAULT_BATCH, "--batch"), dimension(args.height or native, "--height"),
                   dimension(args.width or native, "--width"), dimension(args.tokens or DEFAULT_TOKENS, "--tokens"))


def cmd_build_controlnet(args) -> int:
    """Build an engine of a ControlNet model file (sd-webui-controlnet's layout), check it against
    PyTorch, register it under the file's sha256; the WebUI runs that ControlNet on it."""
    from sd_unet_trt.trt_core.controlnet.source import ControlNetFile

    path = Path(args.file)
    source = ControlNetFile.open(path)  # a file that is no ControlNet we build: one line, before anything else
    backend = get_backend(args.backend) if args.backend else best_backend(args.device)
    backend.require()
    profile = controlnet_profile(args, source.family).validate()
    workspace = Workspace(Path(args.dir))
    print(f"building {source.family.label} with {backend.name} {args.precision}, {profile.label()}")
    print(estimate_line(source, profile, backend, args.precision, args.device, workspace), flush=True)
    update, bar = progress_bar(f"{backend.name} {profile.label()}")
    try:
        entry = build_controlnet_engine(workspace, path, profile, backend, args.precision, update,
                                        device=args.device)
    finally:
        bar.close()
    print(built_line(entry))
    return 0


def cmd_export_controlnet(args) -> int:
    """Export a ControlNet file to ONNX (a ControlNet build runs this in a child process)."""
    from sd_unet_trt.trt_core.controlnet.export import export_controlnet_onnx

    path = Path(args.file)
    if not path.is_file():
        raise CliError(f"no ControlNet file at {path}")

    def unchanged(when: str) -> None:
        if args.expect_stamp and args.expect_stamp != "{0.size}:{0.mtime_ns}".format(FileStamp.of(path)):
            raise CliError(f"{path.name} changed on disk {when}; load it again and retry")
    unchanged("since it was hashed")
    model, config = load_controlnet(path)
    unchanged("while it was read")
    family = ControlNetFamily(config)
    sha256 = args.sha256 or controlnet_file_sha256(path)
    out = Path(args.out) if args.out else Workspace(Path(args.dir)).onnx_folder(CheckpointId.of(sha256, path.stem),
                                                                                 family, args.weights)
    writable(out)
    if args.progress_lines:
        def update(phase, fraction):
            print(progress_line(phase, fraction), flush=True)
        bar = None
    else:
        update, bar = progress_bar("export")
    try:
        result = export_controlnet_onnx(model, family, out, weights=args.weights, device=args.device, progress=update,
                                        source_label=f"ControlNet file {path.name}", sha256=sha256)
    finally:
        if bar is not None:
            bar.close()
    if bar is not None:
        print(f"exported {path.name} ({family.label}) to {result.onnx_path} in {result.seconds:.1f} s")
    return 0


def verify_controlnet(args) -> int:
    """`verify --controlnet FILE`: every engine of the file that can run here against the PyTorch
    ControlNet, as the build checked it (exit code 1 when one is outside its tolerance or cannot run)."""
    from sd_unet_trt.trt_core.backends import get_backend
    from sd_unet_trt.trt_core.catalog import built_file, catalog
    from sd_unet_trt.trt_core.cli.errors import one_line
    from sd_unet_trt.trt_core.controlnet.check import as_runner, compare
    from sd_unet_trt.trt_core.controlnet.family import family_of_entry, is_controlnet_entry
    from sd_unet_trt.trt_core.controlnet.source import ControlNetFile

    source = ControlNetFile.open(Path(args.controlnet))
    workspace = Workspace(Path(args.dir))
    workspace.sweep()
    items = [i for i in catalog(workspace, args.device)
             if is_controlnet_entry(i.entry) and i.entry.checkpoint.sha256 == source.checkpoint.sha256]
    runnable = [i for i in items if i.status.ready]
    if not runnable:
        print(f"nothing to check: {len(items)} engines of {source.path.name} in {workspace.engine_dir}, none can run "
              f"here" + "".join(f"\n  {i.status.state}: {i.entry.id}: {i.status.reason}" for i in items))
        return 0
    reference = source.load(torch.float32, args.device)
    failures = 0
    for item in runnable:
        e = item.entry
        try:
            engine = get_backend(e.backend).load(built_file(workspace.manifest(), e), e.id, family_of_entry(e),
                                                 e.profile, args.device)
            try:
                accuracy = compare(engine, as_runner(reference), family_of_entry(e), e.profile, e.precision,
                                   device=args.device)
            finally:
                engine.close()
        except Exception as error:  # a damaged engine is one line, and the others are still checked
            failures += 1
            print(f"FAIL {e.id}: cannot run it: {one_line(error)}")
            continue
        failures += not accuracy.passed
        print(f"{'ok  ' if accuracy.passed else 'FAIL'} {e.id}: relative error {accuracy.max_rel:.2e} "
              f"(allowed {accuracy.tolerance:.0e})")
    return 1 if failures else 0
