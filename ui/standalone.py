"""The tab on its own, without the WebUI: the built-in tiny model, a folder of your choice, 127.0.0.1.

    python -m sd_unet_trt.ui.standalone --dir ./artifacts --port 7861      (or: python -m sd_unet_trt ui ...)
"""
from __future__ import annotations

import argparse
import logging
import threading
from functools import lru_cache
from pathlib import Path

import torch

from sd_unet_trt.models.families import TINY
from sd_unet_trt.models.unet import seeded_unet
from sd_unet_trt.trt_core.identity import checkpoint_of_module
from sd_unet_trt.trt_core.pipeline import Workspace
from sd_unet_trt.trt_core.unet_source import ModuleUNet
from sd_unet_trt.ui.source import ModelSource

TINY_NAME = "tiny-builtin"


@lru_cache(maxsize=1)
def tiny_model() -> ModuleUNet:
    unet = seeded_unet(TINY.unet_config()).eval()
    return ModuleUNet(unet, checkpoint_of_module(unet, TINY_NAME), TINY)


def tiny_source(root: Path, device: str) -> ModelSource:
    lock = threading.Lock()  # stands in for the WebUI's queue_lock

    def run_exclusive(work):
        with lock:
            return work()
    return ModelSource(Workspace(root), tiny_model, device, run_exclusive)


def launch(root: Path, port: int, device: str, block: bool = True):
    from sd_unet_trt.ui.tab import create_tab

    root.mkdir(parents=True, exist_ok=True)
    demo = create_tab(tiny_source(root, device))
    demo.title = "SD UNet engines (standalone)"
    demo.queue(concurrency_count=4)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=not block,
                show_api=False, inbrowser=False, quiet=True)
    return demo


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sd_unet_trt.ui.standalone", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="./artifacts", help="folder holding Unet-onnx/ and Unet-trt/")
    p.add_argument("--port", type=int, default=7861)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(f"engines in {Path(args.dir).resolve()}; open http://127.0.0.1:{args.port}", flush=True)
    launch(Path(args.dir), args.port, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
