"""modules/paths_internal.py: models_path (tests point it at a temporary folder)."""
import os
import tempfile

models_path = os.path.join(tempfile.gettempdir(), "webui-double-models")
