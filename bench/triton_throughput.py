"""Throughput of a Triton Inference Server serving our engines against calling the router directly,
for 1 to N concurrent clients (docs/SERVING.md).

    python bench/triton_throughput.py --out DIR [--clients 1,2,4,8] [--seconds 10] [--device cpu]

The tiny model's ONNX Runtime engine (64 px, batch 1-2) is built in a temporary workspace, exported
with export-triton and served by the nvidia-pytriton wheel's tritonserver on 127.0.0.1. Each client
sends one image's call (2 rows, cond + uncond) after another; direct rows call the same engine
through a local Router from as many threads. Results: DIR/triton-throughput.json."""
from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

import torch

import checkout  # noqa: F401  (sd_unet_trt from this checkout)
from measure import environment, log

from sd_unet_trt.models.families import TINY  # noqa: E402
from sd_unet_trt.models.unet import seeded_unet  # noqa: E402
from sd_unet_trt.trt_core.backends import get_backend  # noqa: E402
from sd_unet_trt.trt_core.catalog import router_for_checkpoint  # noqa: E402
from sd_unet_trt.trt_core.identity import checkpoint_of_module  # noqa: E402
from sd_unet_trt.trt_core.pipeline import build_engine  # noqa: E402
from sd_unet_trt.trt_core.profiles import Profile, Range  # noqa: E402
from sd_unet_trt.trt_core.router import Router  # noqa: E402
from sd_unet_trt.trt_core.serving import server  # noqa: E402
from sd_unet_trt.trt_core.serving.remote import remote_records  # noqa: E402
from sd_unet_trt.trt_core.serving.repository import export_triton, model_name  # noqa: E402
from sd_unet_trt.trt_core.unet_source import ModuleUNet  # noqa: E402
from sd_unet_trt.trt_core.workspace import Workspace  # noqa: E402

PROFILE = Profile(Range(1, 1, 4), Range(64, 64, 64), Range(64, 64, 64), Range(75, 75, 75))



def throughput(router: Router, clients: int, seconds: float) -> dict:
    """Calls per second from `clients` threads, each sending calls back to back."""
    counts, stop = [0] * clients, threading.Event()

    def client(i: int) -> None:
        x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768)
        while not stop.is_set():
            result = router.run(x, t, c)
            if not result.covered:
                raise AssertionError(result.reason)
            counts[i] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    return {"calls_per_s": sum(counts) / elapsed, "calls": sum(counts), "seconds": elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clients", default="1,2,4,8")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--instances", type=int, default=1)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="triton-bench-"))
    workspace = Workspace(root / "ws")
    unet = seeded_unet(TINY.unet_config(), seed=1)
    checkpoint = checkpoint_of_module(unet, "tiny")
    build_engine(ModuleUNet(unet, checkpoint, TINY), PROFILE, get_backend("onnxruntime"), workspace, "fp32", "cpu")
    export_triton(workspace, checkpoint.sha256, root / "repo", "cpu", args.instances)
    port = server.free_port()
    process = server.start(root / "repo", root, port, server.free_port(), root / "triton.log")
    url, model = f"127.0.0.1:{port}", model_name(checkpoint.sha256)
    result = {"environment": environment(torch.device("cpu")), "instances": args.instances, "rows": []}
    try:
        for clients in map(int, args.clients.split(",")):
            local, _ = router_for_checkpoint(workspace, checkpoint.sha256, "cpu")
            remote = Router(remote_records(url, model))
            before = server.statistics(url, model)
            row = {"clients": clients, "direct": throughput(local, clients, args.seconds),
                   "triton": throughput(remote, clients, args.seconds)}
            after = server.statistics(url, model)
            # Triton counts batch elements: rows (2 per request here)
            row["triton"]["rows_per_execution"] = ((after["inference_count"] - before["inference_count"])
                                                       / max(after["execution_count"] - before["execution_count"], 1))
            remote.close()
            local.close()
            result["rows"].append(row)
            log("row " + json.dumps(row))
            (args.out / "triton-throughput.json").write_text(json.dumps(result, indent=1))
    finally:
        server.stop(process)


if __name__ == "__main__":
    main()
