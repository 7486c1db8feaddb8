"""Nothing the extension adds may hide another package's module: its folders are imported only as
subpackages of `sd_unet_trt`, and loading it into the WebUI leaves sys.path as it was."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUR_FOLDERS = ("models", "trt_core", "ui", "scripts", "trt_unet_webui")
# files that import another project's package of one of those names on purpose, and why
FOREIGN = {"tests/real_webui/compare_controlnet_with_cldm.py": ("scripts", "sd-webui-controlnet's own `scripts` "
           "package (cldm), in a process of its own with that extension first on sys.path, run only against the harness")}


def imported_names(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def our_python_files() -> list[Path]:
    """The checkout's .py files, without hidden folders, the WebUI double and virtual environments: a
    venv may sit anywhere in the checkout (README.md: `python3 -m venv .venv`), its packages are not ours."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        subfolders[:] = [name for name in subfolders if not name.startswith(".") and name != "webui_double"
                         and not (Path(folder, name) / "pyvenv.cfg").exists()]
        found += [Path(folder, name) for name in files if name.endswith(".py")]
    return sorted(found)


def test_no_module_imports_our_folders_as_top_level_packages():
    offenders = []
    for path in our_python_files():
        for name in imported_names(path):
            top = name.split(".")[0]
            if top in OUR_FOLDERS and FOREIGN.get(path.relative_to(ROOT).as_posix(), ("",))[0] != top:
                offenders.append(f"{path.relative_to(ROOT)}: import {name}")
    assert not offenders, "imports that would shadow or be shadowed:\n" + "\n".join(offenders)


def test_loading_the_extension_keeps_blips_models_package_and_sys_path(tmp_path):
    """As in the WebUI: BLIP's repository (with its top-level `models` package) is on sys.path and
    scripts/trt_unet.py is executed by file path; afterwards `models.blip` is still BLIP's, sys.path has
    none of our folders and no folder of ours is a top-level module."""
    blip = tmp_path / "BLIP"
    (blip / "models").mkdir(parents=True)
    (blip / "models" / "__init__.py").write_text("")
    (blip / "models" / "blip.py").write_text("WHO = 'BLIP'\n")
    double = ROOT / "tests" / "webui_double"
    script = textwrap.dedent(f"""
        import importlib.util, sys
        sys.path[:0] = [{str(double)!r}, {str(blip)!r}]
        before = list(sys.path)
        spec = importlib.util.spec_from_file_location("trt_unet.py", {str(ROOT / 'scripts' / 'trt_unet.py')!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        import models.blip
        assert models.blip.WHO == "BLIP", models.blip.__file__
        # libraries may add their own folders (setuptools' _vendor), inside the venv even where it is in the checkout
        added = [p for p in sys.path if p not in before and not p.startswith(sys.prefix + "/")]
        root = {str(ROOT)!r}
        assert not [p for p in added if p == root or p.startswith(root + "/")], added  # not a sibling like root + "venv"
        assert all(p in sys.path for p in before)
        ours = [name for name in {OUR_FOLDERS!r} if name in sys.modules and name != "models"]
        assert not ours, ours
        import sd_unet_trt
        assert list(sd_unet_trt.__path__) == [{str(ROOT)!r}], sd_unet_trt.__path__
        assert "sd_unet_trt.scripts.trt_unet_webui.callbacks" in sys.modules
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_the_export_process_runs_the_command_line_without_our_folders_on_its_path(tmp_path):
    """Inside the WebUI the package is not installed: the export child loads it by path, and our
    folders do not become top-level modules there (a `trt_core` in its working folder stays foreign)."""
    from sd_unet_trt.trt_core.export_process import child_command

    decoy = tmp_path / "trt_core"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise ImportError('the decoy was imported')")
    result = subprocess.run(child_command(["--help"]), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0 and "export" in result.stdout, result.stderr[-3000:]
