"""The workspace folder as a command line option (`--dir` of the CLI and of the standalone tab)."""
from __future__ import annotations

import argparse
from pathlib import Path


def workspace_folder(text: str) -> str:
    """An argparse type: a folder, made when missing. A file in its place (or in place of a folder
    above it) is refused before anything runs, in the same words for every command; without this,
    `list` said "no engines", `build` ENOTDIR and `ui` EEXIST."""
    existing = Path(text)
    while not existing.exists() and existing != existing.parent:  # the nearest part that is there
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file, not a folder; give a folder (it is made when missing)")
    return text
