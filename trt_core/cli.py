"""Command line: `python -m sd_unet_trt demo | build | export | list | verify | remove | recover | ui`."""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from tqdm import tqdm

from sd_unet_trt.models.families import TINY, UnsupportedModelError, family_named
from sd_unet_trt.models.unet import seeded_unet
from sd_unet_trt.trt_core.backends import all_backends, get_backend
from sd_unet_trt.trt_core.backends.base import BackendUnavailable, ProgressFn
from sd_unet_trt.trt_core.catalog import catalog, router_for_checkpoint
from sd_unet_trt.trt_core.checkpoint_file import CheckpointError, FileStamp, family_of_file, unet_from_file
from sd_unet_trt.trt_core.export import ExportError, export_onnx, sample_inputs
from sd_unet_trt.trt_core.export_process import progress_line
from sd_unet_trt.trt_core.identity import checkpoint_of_file, checkpoint_of_module
from sd_unet_trt.trt_core.manifest import CheckpointId, ManifestError
from sd_unet_trt.trt_core.pipeline import Workspace, build_engine
from sd_unet_trt.trt_core.unet_source import CheckpointUNet, ModuleUNet
from sd_unet_trt.trt_core.profiles import Profile, ProfileError, Range, presets_for
from sd_unet_trt.trt_core.sampling import sample_euler_cfg
from sd_unet_trt.trt_core.verify import VerificationError, compare

TINY_NAME = "tiny-builtin"


class CliError(RuntimeError):
    """A user-facing failure: printed as one line, exit code 2."""


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
            raise CliError(f"preset must be 0-{len(presets) - 1}: " + "; ".join(
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


def cmd_build(args) -> int:
    source = build_source(args)
    backend = get_backend(args.backend)
    backend.require()
    profile = profile_from_args(args, source.family).validate()
    update, bar = progress_bar(f"{backend.name} {profile.label()}")
    entry = build_engine(source, profile, backend, Workspace(Path(args.dir)), precision=args.precision,
                         device=args.device, progress=update)
    bar.close()
    checked = (f"error vs PyTorch {entry.accuracy['max_rel']:.2e} (relative)" if entry.accuracy
               else f"not checked against PyTorch ({entry.details.get('unverified', 'no reason recorded')})")
    print(f"built {entry.id}: {entry.file_size / 2**20:.1f} MiB in {entry.build_seconds:.1f} s, {checked}")
    for note in entry.details.get("notes", []):
        print(f"  note: {note}")
    return 0


def cmd_list(args) -> int:
    items = catalog(Workspace(Path(args.dir)), args.device)
    if not items:
        print(f"no engines in {Workspace(Path(args.dir)).engine_dir}")
    for item in items:
        e = item.entry
        targets = e.details.get("targets")
        built_for = f"{e.gpu_arch} ({', '.join(targets)})" if targets else e.gpu_arch
        print(f"{item.status.state:10} {e.id}\n        {e.checkpoint.name} [{e.checkpoint.short_hash}] {e.family}, "
              f"{e.backend} {e.backend_version} {e.precision} for {built_for}, {e.profile.label()}, "
              f"{e.file_size / 2**20:.1f} MiB" + (f"\n        {item.status.reason}" if item.status.reason else "")
              + ("\n        not checked against PyTorch: built where it could not run (`verify` checks it on a GPU)"
                 if e.details.get("unverified") else ""))
    return 0


def cmd_remove(args) -> int:
    entry = Workspace(Path(args.dir)).manifest().remove(args.id)
    print(f"removed {entry.id} and {entry.file}")
    return 0


def cmd_recover(args) -> int:
    entries, kept = Workspace(Path(args.dir)).manifest().recover()
    print(f"manifest rebuilt with {len(entries)} engines" + (f"; the broken one is kept as {kept}" if kept else ""))
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
    if args.progress_lines:
        def update(phase, fraction):
            print(progress_line(phase, fraction), flush=True)
        bar = None
    else:
        update, bar = progress_bar("export")
    unet = unet_from_file(path, family)
    if args.expect_stamp and args.expect_stamp != "{0.size}:{0.mtime_ns}".format(FileStamp.of(path)):
        raise CliError(f"{path.name} changed on disk while it was read; load it again and retry")
    result = export_onnx(unet, family, out, weights=args.weights, device=args.device, progress=update,
                         source_label=f"checkpoint file {path.name}", checkpoint_sha256=sha256)
    if bar is not None:
        bar.close()
        print(f"exported {path.name} ({family.label}) to {result.onnx_path} in {result.seconds:.1f} s")
    return 0


def cmd_verify(args) -> int:
    """Re-check every ready engine of the tiny model (or a checkpoint) against PyTorch."""
    source = build_source(args)
    checkpoint, family = source.checkpoint, source.family
    unet = source.load(torch.float32, args.device)
    workspace = Workspace(Path(args.dir))
    failures = 0
    for item in catalog(workspace, args.device):
        e = item.entry
        if e.checkpoint.sha256 != checkpoint.sha256 or not item.status.ready:
            continue
        engine = get_backend(e.backend).load(workspace.manifest().file_path(e), e.id, family, e.profile, args.device)
        accuracy = compare(engine, unet, family, e.profile, e.precision, device=args.device)
        engine.close()
        failures += not accuracy.passed
        print(f"{'ok  ' if accuracy.passed else 'FAIL'} {e.id}: relative error {accuracy.max_rel:.2e} "
              f"(allowed {accuracy.tolerance:.0e})")
    return 1 if failures else 0


@torch.inference_mode()
def _time_sampling(unet_fn, noise, cond, uncond, steps, sync) -> tuple[torch.Tensor, float]:
    sample_euler_cfg(unet_fn, noise, cond, uncond, 1)  # warm-up: first-call allocations, graph capture
    sync()
    started = time.perf_counter()
    latents = sample_euler_cfg(unet_fn, noise, cond, uncond, steps)
    sync()
    return latents, (time.perf_counter() - started) / steps * 1000


# Inductor's C++ compile of even the tiny UNet takes minutes on a small CPU: the demo leaves the
# torch backend out there unless asked for by name.
SLOW_ON_CPU = {"torch"}


def demo_backends(names: str | None, device: str) -> tuple[list, list[tuple[str, str]]]:
    """The backends the demo builds, and (name, reason) for those it leaves out."""
    chosen, skipped = [], []
    wanted = None if names is None else {n.strip() for n in names.split(",") if n.strip()}
    for backend in all_backends():
        status = backend.availability()
        if wanted is not None and backend.name not in wanted:
            continue
        if not status.available:
            skipped.append((backend.name, status.reason))
        elif wanted is None and device == "cpu" and backend.name in SLOW_ON_CPU:
            skipped.append((backend.name, f"left out on the CPU (compiling takes minutes); --backends {backend.name} includes it"))
        else:
            chosen.append(backend)
    return chosen, skipped


def cmd_demo(args) -> int:
    """Export the tiny UNet, build it with every backend here, denoise through the router."""
    device = args.device
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="trt-demo-"))
    workspace = Workspace(root)
    source = tiny_model()
    unet, checkpoint, family = source.module.to(device), source.checkpoint, source.family
    precision = "fp32" if device == "cpu" else "fp16"
    dtype = torch.float32 if precision == "fp32" else torch.float16
    generator = torch.Generator().manual_seed(args.seed)
    noise, _, cond = sample_inputs(family, 1, 8, 8, 77, dtype, device, generator)
    uncond = torch.randn(cond.shape, generator=generator).to(device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    reference_unet = unet.to(dtype)
    reference, ref_ms = _time_sampling(reference_unet, noise, cond, uncond, args.steps, sync)
    rows = [("pytorch (eager)", "-", f"{ref_ms:.2f}", "0 (reference)", "")]
    backends, skipped = demo_backends(args.backends, device)
    rows += [(name, "-", "-", "-", reason) for name, reason in skipped]
    for backend in backends:
        # the first preset (the default first) this backend can build
        profile = next(p.profile for p in presets_for(family) if backend.profile_problem(p.profile) is None)
        update, bar = progress_bar(f"build {backend.name}")
        try:
            entry = build_engine(source, profile, backend, workspace, precision=precision, device=device,
                                 progress=update)
        except Exception as e:  # one backend's failure is a row of the table, not the end of the demo
            logging.getLogger(__name__).debug("build with %s failed", backend.name, exc_info=True)
            bar.close()
            rows.append((backend.name, "-", "-", "-", f"build failed: {e}"))
            continue
        bar.close()
        cannot_run = backend.can_run(device)
        if cannot_run:  # TensorRT for RTX builds real engines without a GPU, for the GPUs it serves
            rows.append((backend.name, f"{entry.build_seconds:.1f}", "-", "-", f"built; not run: {cannot_run}"))
            continue
        router, _ = router_for_checkpoint(workspace, checkpoint.sha256, device)
        router.records = [r for r in router.records if r.id == entry.id]

        def through_router(x, t, c, router=router):
            result = router.run(x, t, c)
            if not result.covered:
                raise CliError(f"demo call not covered: {result.reason}")
            return result.output
        latents, ms = _time_sampling(through_router, noise, cond, uncond, args.steps, sync)
        router.close()
        rel = float((latents.double() - reference.double()).norm() / reference.double().norm())
        rows.append((backend.name, f"{entry.build_seconds:.1f}", f"{ms:.2f}", f"{rel:.2e}", ""))
    print(f"\ndemo: tiny UNet ({sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M parameters), "
          f"{args.steps} Euler steps with CFG at 64x64 px on {device}, {precision}; engines in {workspace.engine_dir}")
    header = ("backend", "build s", "ms/step", "rel. error vs PyTorch", "note")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    for row in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip())
    return 0


def cmd_ui(args) -> int:
    from sd_unet_trt.ui.standalone import main as ui_main
    return ui_main(["--dir", args.dir, "--port", str(args.port)])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sd_unet_trt", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)
    default_device = "cuda" if torch.cuda.is_available() else "cpu"

    def common(cmd, needs_dir=True):
        if needs_dir:
            cmd.add_argument("--dir", default="./artifacts", help="folder holding Unet-onnx/ and Unet-trt/")
        cmd.add_argument("--device", default=default_device, choices=["cpu", "cuda"])
        return cmd

    demo = common(sub.add_parser("demo", help=cmd_demo.__doc__), needs_dir=False)
    demo.add_argument("--dir", default=None, help="keep the artifacts here (default: a temp folder)")
    demo.add_argument("--steps", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--backends", help="comma-separated backends to build (default: every one available here)")
    for name, helptext in [("build", "export, verify and build an engine"), ("verify", cmd_verify.__doc__)]:
        cmd = common(sub.add_parser(name, help=helptext))
        cmd.add_argument("--checkpoint", help="a .safetensors or .ckpt file (default: the built-in tiny model)")
        cmd.add_argument("--prediction", default="eps", choices=["eps", "v"], help="v for SD2.x 768-v models")
        if name == "build":
            cmd.add_argument("--backend", default="tensorrt", choices=["tensorrt", "torch", "onnxruntime"])
            cmd.add_argument("--precision", default="fp16", choices=["fp16", "bf16", "fp32"])
            cmd.add_argument("--preset", type=int, help="index of the family's preset (0 = default)")
            cmd.add_argument("--profile", help="BATCH,HEIGHT,WIDTH,TOKENS as min:opt:max each")
    export = common(sub.add_parser("export", help=cmd_export.__doc__))
    export.add_argument("--checkpoint", required=True, help="a .safetensors or .ckpt file")
    export.add_argument("--out", help="the export folder (default: the one builds use, under --dir)")
    export.add_argument("--weights", default="fp16", choices=["fp16", "fp32"])
    export.add_argument("--prediction", default="eps", choices=["eps", "v"])
    export.add_argument("--family", help="the model family (default: read off the weights)")
    export.add_argument("--sha256", help="the file's sha256, when already known (default: hash it)")
    export.add_argument("--expect-stamp", help=argparse.SUPPRESS)  # SIZE:MTIME_NS the caller hashed
    export.add_argument("--progress-lines", action="store_true", help=argparse.SUPPRESS)
    common(sub.add_parser("list", help="list engines and their status"))
    remove = common(sub.add_parser("remove", help="delete an engine"))
    remove.add_argument("id")
    common(sub.add_parser("recover", help="rebuild a broken manifest from the engines' sidecar files"))
    ui = common(sub.add_parser("ui", help="the tab on its own, on 127.0.0.1, with the tiny model"))
    ui.add_argument("--port", type=int, default=7861)
    return p


COMMANDS = {"demo": cmd_demo, "build": cmd_build, "export": cmd_export, "list": cmd_list, "remove": cmd_remove,
            "recover": cmd_recover, "verify": cmd_verify, "ui": cmd_ui}


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore")
    try:
        return COMMANDS[args.command](args)
    except (CliError, BackendUnavailable, ManifestError, ProfileError, UnsupportedModelError,
            VerificationError, CheckpointError, ExportError, KeyError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
        return 2
