"""Command line: `python -m sd_unet_trt demo | build | build-controlnet | export | export-controlnet | list | verify | remove | recover | export-triton | ui`.

Exit codes (docs in README.md):
  0  done
  1  `verify` found an engine outside its tolerance, or one it could not check
  2  the command could not do its job; stderr has one line saying why (bad input, a busy or full
     disk, a missing library, a broken manifest, ...)
  3  an unexpected error: one line too, the traceback with -v
  130  interrupted (Ctrl-C)
"""
from __future__ import annotations

import logging
import sys
import warnings
from typing import Callable, Sequence

from sd_unet_trt.trt_core.cli.errors import exit_code_and_line
from sd_unet_trt.trt_core.cli.parser import parser
from sd_unet_trt.trt_core.interrupts import INTERRUPTED_EXIT, INTERRUPTED_LINE


def main(argv: list[str] | None = None, extra_commands: Sequence[Callable] = ()) -> int:
    """Run one command; `extra_commands`: see parser (the package's entry points add `ui`)."""
    try:
        args = parser(extra_commands).parse_args(argv)
    except KeyboardInterrupt:
        print(INTERRUPTED_LINE, file=sys.stderr)
        return INTERRUPTED_EXIT
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        warnings.filterwarnings("ignore")
    try:
        return args.run(args)
    except BaseException as e:  # noqa: BLE001 - every failure becomes one line and an exit code
        if isinstance(e, SystemExit):
            raise
        code, line = exit_code_and_line(e)
        if args.verbose and code == 3:
            logging.getLogger(__name__).exception("unexpected error")
        print(line, file=sys.stderr)
        return code
