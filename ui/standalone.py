"""The tab on its own, without the WebUI: the built-in tiny model, a folder of your choice, 127.0.0.1.

    python -m sd_unet_trt.ui.standalone --dir ./artifacts --port 7861      (or: python -m sd_unet_trt ui ...)

Any web page the user opens can send requests to 127.0.0.1, and nothing asks for a login, so the
server answers only its own page (SameOriginOnly) and serves no files.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

import torch
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse

from sd_unet_trt.models.families import TINY
from sd_unet_trt.models.unet import seeded_unet
from sd_unet_trt.trt_core.identity import checkpoint_of_module
from sd_unet_trt.trt_core.unet_source import ModuleUNet
from sd_unet_trt.trt_core.workspace import Workspace
from sd_unet_trt.trt_core.workspace_path import workspace_folder
from sd_unet_trt.ui.event_calls import EventCallCheck
from sd_unet_trt.ui.source import ModelSource

TINY_NAME = "tiny-builtin"
MAX_BODY = 2**20  # bytes; the tab's requests are small JSON, and Gradio reads a body whole


class SameOriginOnly:
    """ASGI middleware: 403 for any request another web page could make the browser send (an Origin
    that is not this server's, a browser's own cross-site mark, a Host of another name that
    resolves here: DNS rebinding), the queue's websocket included; 413 for bodies over MAX_BODY."""

    def __init__(self, app, port: int):
        self.app = app
        self.hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self.origins = {f"http://{host}" for host in self.hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        origin, length = headers.get("origin"), headers.get("content-length", "0")
        if (headers.get("host") not in self.hosts or (origin is not None and origin not in self.origins)
                or headers.get("sec-fetch-site", "none") not in ("same-origin", "none")):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})  # before accepting: the server answers 403
            else:
                await PlainTextResponse("only this server's own page may call it", 403)(scope, receive, send)
        elif "transfer-encoding" in headers or not length.isdigit() or len(length) > 12 or int(length) > MAX_BODY:
            await PlainTextResponse(f"request bodies are limited to {MAX_BODY} bytes", 413)(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def served_roots(root: Path) -> list[str]:
    """For `blocked_paths`: the file-system roots of the folders Gradio 3.41 serves /file= requests
    from (any file below the working folder, its temp folders) and of the engines' folder. Blocking
    them serves nothing: the tab shows no file, and those folders hold code, models, anything."""
    folders = [Path.cwd(), Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir()), root]
    return sorted({folder.resolve().anchor for folder in folders})


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


def serve(root: Path, port: int, device: str):
    """Serves the tab until interrupted. Our app is the outer one and Gradio's is mounted inside it,
    so SameOriginOnly sees every request before anything of Gradio's does: Gradio adds a CORS
    middleware that allows any origin and would answer other pages' preflight requests itself."""
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    from sd_unet_trt.ui.tab import create_tab

    root.mkdir(parents=True, exist_ok=True)
    Workspace(root).sweep()  # what killed builds left
    demo = create_tab(tiny_source(root, device))
    demo.title = "SD UNet engines (standalone)"
    demo.show_api = False
    demo.blocked_paths = served_roots(root)
    demo.queue(concurrency_count=4)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None,
                  middleware=[Middleware(SameOriginOnly, port=port), Middleware(EventCallCheck, blocks=demo)])
    app = gr.mount_gradio_app(app, demo, "/", gradio_api_url=f"http://127.0.0.1:{port}/")
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")).run()


def port_problem(port: int) -> str:
    """Why the server cannot listen on 127.0.0.1:port ("" when it can). Asked before anything starts:
    uvicorn finds out only after Gradio has started, then waits and exits with its own line."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a closing socket is no obstacle
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as e:
            return f"port {port} on 127.0.0.1 is taken ({e.strerror}); choose another with --port"
    return ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sd_unet_trt.ui.standalone", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=workspace_folder, default="./artifacts",
                   help="folder holding Unet-onnx/ and Unet-trt/")
    p.add_argument("--port", type=int, default=7861)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    args = p.parse_args(argv)
    busy = port_problem(args.port)
    if busy:
        print(f"error: {busy}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(f"engines in {Path(args.dir).resolve()}; open http://127.0.0.1:{args.port}", flush=True)
    serve(Path(args.dir), args.port, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
