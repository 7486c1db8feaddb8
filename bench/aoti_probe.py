"""Which AOTInductor packaging and loading paths work on this machine (each case in its own process).

    python bench/aoti_probe.py            # runs every case in parallel, one line each
    python bench/aoti_probe.py CASE DIR   # one case
"""
import faulthandler
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

CASES = ["path", "fileobj", "meta_json", "single_thread", "so_direct", "cpu_path"]


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(64, 64), torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x, z):
        return self.a(x).relu(), self.b(z)


def one(case: str, work: Path) -> None:
    faulthandler.enable()
    device = "cpu" if case == "cpu_path" else "cuda"
    model = Small().to(device).half() if device == "cuda" else Small()
    dtype = torch.float16 if device == "cuda" else torch.float32
    args = (torch.randn(8, 64, device=device, dtype=dtype), torch.randn(2, 4, 16, 16, device=device, dtype=dtype))
    ep = torch.export.export(model, args)
    cfg = {}
    if case == "meta_json":
        cfg["aot_inductor.metadata"] = {"k": json.dumps({"a": 1, "b": "x"})}
    path = work / f"{case}.pt2"
    t0 = time.time()
    if case == "fileobj":
        with open(path, "wb+") as f:
            torch._inductor.aoti_compile_and_package(ep, package_path=f, inductor_configs=cfg)
    else:
        torch._inductor.aoti_compile_and_package(ep, package_path=str(path), inductor_configs=cfg)
    print(case, "built", round(time.time() - t0, 1), flush=True)
    if case == "so_direct":
        out_dir = work / "so_direct_x"
        with zipfile.ZipFile(path) as z:
            z.extractall(out_dir)
        so = next(out_dir.rglob("*.so"))
        runner = torch._C._aoti.AOTIModelContainerRunnerCuda(str(so), 1, "cuda", str(so.parent))
        out = runner.run(list(args))
    else:
        loaded = torch._inductor.aoti_load_package(str(path), run_single_threaded=case == "single_thread")
        out = loaded(*args)
    ref = model(*args)
    err = max(((o.float() - r.float()).norm() / r.float().norm()).item() for o, r in zip(out, ref))
    print(case, "OK rel_err", err, flush=True)


def main() -> None:
    if len(sys.argv) == 3:
        one(sys.argv[1], Path(sys.argv[2]))
        return
    work = Path(tempfile.mkdtemp())
    procs = {c: subprocess.Popen([sys.executable, __file__, c, str(work)], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True) for c in CASES}
    for case, p in procs.items():
        out, _ = p.communicate()
        lines = [line for line in out.splitlines() if line.startswith(case) or "Error" in line or "error" in line or "File " in line]
        print(f"== {case}: rc={p.returncode}", *lines[-8:], sep="\n  ", flush=True)


if __name__ == "__main__":
    main()
