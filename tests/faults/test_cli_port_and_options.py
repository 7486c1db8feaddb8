"""The command line's small things (issue 18): a busy port, `-v` after the command, the summary of
the commands, and the standalone tab's defaults on this machine."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

from tests.faults.helpers import REPO, cli, one_line_error
from sd_unet_trt.models.families import TINY
from sd_unet_trt.trt_core.cli.parser import parser
from sd_unet_trt.ui.form import presets
from sd_unet_trt.ui.standalone import tiny_source
from sd_unet_trt.ui.tab import create_tab


def test_a_taken_port_is_one_line_and_exit_2_at_once(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "sd_unet_trt", "ui", "--dir", str(tmp_path / "w"), "--port",
                               str(port)], cwd=REPO, capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - started
    line = one_line_error(proc)
    assert proc.returncode == 2 and f"port {port}" in line and "--port" in line, (proc.returncode, line)
    assert "open http" not in proc.stdout and not (tmp_path / "w").exists(), proc.stdout
    assert elapsed < 20, elapsed  # before: uvicorn gave up after about 30 s


def test_verbose_is_taken_before_and_after_the_command(tmp_path):
    for argv in (["-v", "list"], ["list", "-v"], ["list", "--verbose"]):
        assert parser().parse_args(argv).verbose is True, argv
    assert parser().parse_args(["list"]).verbose is False
    proc = cli("list", "-v", "--dir", tmp_path)
    assert proc.returncode == 0 and "no engines" in proc.stdout, proc.stderr[-2000:]


def test_the_help_summary_names_every_command():
    from sd_unet_trt.ui.command import add_ui_command

    summary = parser().description.splitlines()[0]
    commands = next(a for a in parser((add_ui_command,))._actions if a.dest == "command").choices
    assert "ui" in commands  # the entry points' command line has it
    missing = [name for name in commands if name not in summary]
    assert not missing, (missing, summary)


def component(tab, elem_id):
    return next(b for b in tab.blocks.values() if getattr(b, "elem_id", None) == elem_id)


def test_the_tabs_backend_is_the_one_the_cli_picks(tmp_path):
    from sd_unet_trt.trt_core.backends import best_backend  # the CLI's pick, shared since issue 18

    tab = create_tab(tiny_source(tmp_path, "cpu"))
    assert component(tab, "trt_backend").value == best_backend("cpu").name != "tensorrt"


def test_which_engine_starts_at_the_loaded_models_default_preset(tmp_path):
    tab = create_tab(tiny_source(tmp_path, "cpu"))
    fields = ["trt_q_width", "trt_q_height", "trt_q_batch", "trt_q_tokens"]
    load = next(fn.fn for dep, fn in zip(tab.dependencies, tab.fns) if dep["trigger"] == "load")
    outputs = [tab.blocks[i] for i in next(dep["outputs"] for dep in tab.dependencies if dep["trigger"] == "load")]
    shown = {block.elem_id: value for block, value in zip(outputs, load()) if block.elem_id in fields}
    profile = presets(TINY)[0].profile
    assert shown == {"trt_q_width": profile.width.opt, "trt_q_height": profile.height.opt,
                     "trt_q_batch": profile.batch.opt, "trt_q_tokens": profile.tokens.opt}, shown
    assert shown["trt_q_width"] in profile.width and shown["trt_q_height"] in profile.height  # not 512
