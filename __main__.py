"""The command line: `python -m sd_unet_trt ...` where the package is installed. A copy that is
not installed (the WebUI's) runs this file by path: the package is then loaded from this folder
under its one name (trt_core.export_process starts the export that way)."""
import sys

if not __package__:
    import importlib.util
    from pathlib import Path

    _root = Path(__file__).resolve().parent
    _spec = importlib.util.spec_from_file_location("sd_unet_trt", _root / "__init__.py", submodule_search_locations=[str(_root)])
    sys.modules["sd_unet_trt"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["sd_unet_trt"])

try:
    from sd_unet_trt.ui.command import main  # noqa: E402 - torch and the rest load here, for seconds
except KeyboardInterrupt:  # Ctrl-C before main() runs: the same line and code as during a command
    import os

    from sd_unet_trt.trt_core.interrupts import INTERRUPTED_EXIT, INTERRUPTED_LINE

    print(INTERRUPTED_LINE, file=sys.stderr, flush=True)
    # Not sys.exit: in some runs CPython had marked this interrupt unhandled (it does so where one
    # arrives in code run through PyRun_*, as extension modules may run while they initialize) and,
    # at exit, ended the process by SIGINT (-2) whatever code it was given (tests/faults/
    # test_interrupts.py, import phase: 1 run in 3 before the ControlNet modules, nearly every run
    # after). Nothing has run yet that an exit handler would have to finish.
    os._exit(INTERRUPTED_EXIT)

sys.exit(main())
