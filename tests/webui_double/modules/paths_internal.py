"""modules/paths_internal.py: models_path and the extensions folders (tests point them at
temporary folders)."""
import os
import tempfile

models_path = os.path.join(tempfile.gettempdir(), "webui-double-models")
extensions_dir = os.path.join(tempfile.gettempdir(), "webui-double-data", "extensions")
extensions_builtin_dir = os.path.join(tempfile.gettempdir(), "webui-double", "extensions-builtin")
