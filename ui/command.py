"""The command line's `ui` command (`python -m sd_unet_trt ui`): the tab on its own. trt_core's
command line imports nothing above trt_core, so this command is added to it here, and the package's
entry points (__main__.py, pyproject's `sd-unet-trt`) run `main`: every command, `ui` included."""
from __future__ import annotations

from sd_unet_trt.trt_core import cli
from sd_unet_trt.trt_core.cli.parser import bounded_int


def run_ui(args) -> int:
    """The tab on its own, on 127.0.0.1, with the built-in tiny model."""
    from sd_unet_trt.ui.standalone import main as ui_main  # Gradio loads for this command only

    return ui_main(["--dir", args.dir, "--port", str(args.port), "--device", args.device])


def add_ui_command(command) -> None:
    """Declare `ui` through the parser's `command` (name, run, help) -> its subparser."""
    u = command("ui", run_ui, run_ui.__doc__)
    u.add_argument("--port", type=bounded_int(1024, 65535), default=7861, help="port on 127.0.0.1")


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv, extra_commands=(add_ui_command,))
