"""The command line's arguments: every command and option with its help and default."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import torch

from sd_unet_trt.trt_core.backends import REGISTRY
from sd_unet_trt.trt_core.cli import commands, controlnet_commands, demo
from sd_unet_trt.trt_core.precision import NAMES
from sd_unet_trt.trt_core.profiles import BATCH_LIMITS
from sd_unet_trt.trt_core.workspace_path import workspace_folder

DEFAULT_DIR = "./artifacts"
MAX_STEPS = 1000
MAX_SEED = 2**32 - 1  # the WebUI's seed range; torch's generator takes no more than 64 bits


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help (where there is one; an option without says what
    happens then), descriptions kept as written."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def bounded_int(low: int, high: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {low}-{high}, got {value}")
        return value
    return parse


def device_name(text: str) -> str:
    if text == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"no CUDA GPU here (torch {torch.__version__} sees none); use --device cpu")
    return text


def parser(extra_commands: Sequence[Callable] = ()) -> argparse.ArgumentParser:
    """Every command; `extra_commands` add those of layers above trt_core (ui/command.py: `ui`),
    each called with `command` below."""
    p = argparse.ArgumentParser(prog="python -m sd_unet_trt", description=sys.modules[__package__].__doc__,
                                formatter_class=Formatter)
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details, and tracebacks of errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    default_device = "cuda" if torch.cuda.is_available() else "cpu"

    def command(name: str, run, help_text: str, needs_dir: bool = True):
        cmd = sub.add_parser(name, help=help_text, description=help_text, formatter_class=Formatter)
        cmd.set_defaults(run=run)
        # also after the command (`list -v`); SUPPRESS leaves the top-level value when it is not given here
        cmd.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="log progress details, and tracebacks of errors")
        if needs_dir:
            cmd.add_argument("--dir", type=workspace_folder, default=DEFAULT_DIR,
                             help="the workspace: holds Unet-onnx/ and Unet-trt/")
        cmd.add_argument("--device", type=device_name, default=default_device, choices=["cpu", "cuda"],
                         help="where engines are checked and run")
        return cmd

    def source_options(cmd) -> None:
        cmd.add_argument("--checkpoint", help="a .safetensors or .ckpt file (default: the built-in tiny model)")
        cmd.add_argument("--prediction", default="eps", choices=["eps", "v"], help="v for SD2.x 768-v models")

    d = command("demo", demo.cmd_demo, demo.cmd_demo.__doc__, needs_dir=False)
    d.add_argument("--dir", type=workspace_folder,
                   help="keep the artifacts in this folder (default: a temp folder, removed afterwards)")
    d.add_argument("--steps", type=bounded_int(1, MAX_STEPS), default=8, help="sampling steps per run")
    d.add_argument("--seed", type=bounded_int(0, MAX_SEED), default=0, help="seed of the noise and prompts")
    d.add_argument("--backends", help=f"comma-separated, of {', '.join(REGISTRY)} (default: every one available "
                                      f"here, the torch backend only on a GPU)")
    d.add_argument("--triton", metavar="HOST:PORT", help="also sample through a Triton server serving the tiny "
                                                         "model (docs/SERVING.md)")

    b = command("build", commands.cmd_build, commands.cmd_build.__doc__)
    source_options(b)
    b.add_argument("--backend", choices=list(REGISTRY),
                   help="default: the best one that builds and runs here (tensorrt, then torch on a GPU, "
                        "then onnxruntime)")
    b.add_argument("--precision", default="fp16", choices=list(NAMES),
                   help="fp16 for GPUs; the CPU runs fp32 best; TensorRT takes fp16 or fp32; int8 and fp8 "
                        "(torch and TensorRT backends; fp8 on Ada, Hopper and newer) are checked over a "
                        "whole denoising loop before they are registered")
    b.add_argument("--controlnet", action="store_true",
                   help="the engine also takes sd-webui-controlnet's residuals (zeros without ControlNet), so "
                        "ControlNet generations run on it too")
    size = b.add_mutually_exclusive_group()
    size.add_argument("--preset", type=bounded_int(0, 99), help="index of the family's preset (0 = the default one)")
    size.add_argument("--profile", help="BATCH,HEIGHT,WIDTH,TOKENS as min:opt:max each, e.g. "
                                        "1:1:4,512:512:768,512:512:768,75:75:150 (default: preset 0); batch "
                                        f"{BATCH_LIMITS[0]}-{BATCH_LIMITS[1]} images, pixels multiples of 8, tokens "
                                        "multiples of 75")

    def verify(args) -> int:  # a ControlNet's engines, or a UNet's
        return (controlnet_commands.verify_controlnet if args.controlnet else commands.cmd_verify)(args)

    v = command("verify", verify, commands.cmd_verify.__doc__)
    source_options(v)
    v.add_argument("--controlnet", metavar="FILE", help="check the engines of this ControlNet model instead")

    e = command("export", commands.cmd_export, commands.cmd_export.__doc__)
    e.add_argument("--checkpoint", required=True, help="a .safetensors or .ckpt file")
    e.add_argument("--out", help="the export folder (default: the one builds use, under --dir): a new or empty "
                                 "folder, or an earlier export of this extension, which is replaced; a folder "
                                 "holding anything else is refused and left as it is")
    e.add_argument("--weights", default="fp16", choices=["fp16", "fp32"], help="the dtype stored in the ONNX")
    e.add_argument("--prediction", default="eps", choices=["eps", "v"], help="v for SD2.x 768-v models")
    e.add_argument("--family", help="the model family (default: read off the weights)")
    e.add_argument("--sha256", help="the file's sha256, when already known (default: hash it)")
    e.add_argument("--expect-stamp", help=argparse.SUPPRESS)  # SIZE:MTIME_NS the caller hashed
    e.add_argument("--progress-lines", action="store_true", help=argparse.SUPPRESS)

    c = command("build-controlnet", controlnet_commands.cmd_build_controlnet,
                controlnet_commands.cmd_build_controlnet.__doc__)
    c.add_argument("file", metavar="FILE", help="a ControlNet model (.safetensors, .pth) as sd-webui-controlnet loads it")
    for name, what in (("height", "pixels, multiples of 8"), ("width", "pixels, multiples of 8"),
                       ("batch", f"images ({BATCH_LIMITS[0]}-{BATCH_LIMITS[1]})"), ("tokens", "multiples of 75")):
        default = {"batch": controlnet_commands.DEFAULT_BATCH, "tokens": controlnet_commands.DEFAULT_TOKENS}.get(name)
        c.add_argument(f"--{name}", help=f"N or MIN:OPT:MAX, {what} (default: "
                                         f"{default or 'the size its UNets are trained at'})")
    c.add_argument("--backend", choices=list(REGISTRY), help="default: the best one that builds and runs here")
    c.add_argument("--precision", default="fp16", choices=["fp16", "fp32"], help="fp16 for GPUs; the CPU runs fp32 best")

    x = command("export-controlnet", controlnet_commands.cmd_export_controlnet,
                controlnet_commands.cmd_export_controlnet.__doc__)
    x.add_argument("file", metavar="FILE", help="a ControlNet model (.safetensors, .pth)")
    x.add_argument("--out", help="the export folder (default: the one builds use, under --dir)")
    x.add_argument("--weights", default="fp16", choices=["fp16", "fp32"], help="the dtype stored in the ONNX")
    x.add_argument("--sha256", help="the file's sha256, when already known (default: hash it)")
    x.add_argument("--expect-stamp", help=argparse.SUPPRESS)  # SIZE:MTIME_NS the caller hashed
    x.add_argument("--progress-lines", action="store_true", help=argparse.SUPPRESS)

    command("list", commands.cmd_list, commands.cmd_list.__doc__)
    r = command("remove", commands.cmd_remove, commands.cmd_remove.__doc__)
    r.add_argument("id", help="the engine's id, as `list` shows it")
    command("recover", commands.cmd_recover, commands.cmd_recover.__doc__)
    t = command("export-triton", commands.cmd_export_triton, commands.cmd_export_triton.__doc__)
    t.add_argument("--checkpoint", help="the checkpoint's sha256, or its first 10 characters (as `list` shows "
                                        "them in brackets); default: the only checkpoint with engines")
    t.add_argument("--out", required=True, help="the Triton model repository to write into")
    t.add_argument("--instances", type=bounded_int(1, 64), default=1, help="model instances (per GPU on a GPU)")
    for add in extra_commands:
        add(command)
    return p
