"""`import checkout` first in a benchmark run as `python bench/X.py`: makes `sd_unet_trt` importable
from this checkout where the package is not installed (the GPU machine), loading it by path."""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if "sd_unet_trt" not in sys.modules:
    try:
        import sd_unet_trt  # noqa: F401  (installed: pip install -e .)
    except ImportError:
        _spec = importlib.util.spec_from_file_location("sd_unet_trt", ROOT / "__init__.py",
                                                       submodule_search_locations=[str(ROOT)])
        sys.modules["sd_unet_trt"] = importlib.util.module_from_spec(_spec)
        _spec.loader.exec_module(sys.modules["sd_unet_trt"])
