"""The Gradio tab: export engines with live progress, and manage the engines on disk."""
