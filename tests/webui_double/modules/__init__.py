"""The double of the WebUI's `modules` package (see tests/webui_double/__init__.py)."""
