"""The command line: `python -m sd_unet_trt ...` where the package is installed, or
`python <extension folder>/__main__.py ...` from a copy that is not (the WebUI's): then the package
is loaded from this folder by path and nothing is added to sys.path."""
import sys

if not __package__:
    import importlib.util
    from pathlib import Path

    _root = Path(__file__).resolve().parent
    if sys.path and Path(sys.path[0] or ".").resolve() == _root:
        del sys.path[0]  # Python put this folder there; its subfolders must not become top-level modules
    _spec = importlib.util.spec_from_file_location("sd_unet_trt", _root / "__init__.py", submodule_search_locations=[str(_root)])
    sys.modules["sd_unet_trt"] = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(sys.modules["sd_unet_trt"])

from sd_unet_trt.trt_core.cli import main  # noqa: E402

sys.exit(main())
