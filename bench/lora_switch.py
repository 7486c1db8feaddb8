"""LoRA switch time with the torch backend: from "the active networks changed" to "the engine runs
with the new weights", the code path the WebUI hook takes.

    python bench/lora_switch.py --models sd15,sdxl --out DIR        # on an NVIDIA GPU
    python bench/lora_switch.py --models tiny --device cpu --out DIR

Per model: a torch engine (fp16, one image with CFG at the model's size) built from random
weights; the UNet's weights held on the CPU in fp16, as the WebUI holds its built-in UNet while an
engine UNet is active; random LoRAs of rank 32 on the layers LoRA trainers target (attention
q/k/v/out, feed-forward, proj_in/out), as networks of the WebUI's Lora extension (each layer's
calc_updown: up @ down * alpha / rank * multiplier, its weights on the CPU). A switch is
trt_core.weight_sync's update (which weights change, the merge on the GPU by the hook's own
merge function) plus the router handing the values to the engine, synchronised. The first switch
also copies the touched base weights once (from the engine's own copies on the GPU, which the
torch backend gives); later ones do not. After every switch the
engine's output is checked against an fp32 eager UNet holding the same merged weights, and the
step time with a LoRA is timed too.
"""
from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

import torch

from measure import environment, log, rel_error, sync, time_steps
from workloads import WORKLOADS, Workload, make_inputs, make_unet

from sd_unet_trt.scripts.trt_unet_webui.live_weights import merge_function  # noqa: E402
from sd_unet_trt.trt_core.backends.base import BuildRequest  # noqa: E402
from sd_unet_trt.trt_core.backends import get_backend  # noqa: E402
from sd_unet_trt.trt_core.profiles import Profile  # noqa: E402
from sd_unet_trt.trt_core.router import Router  # noqa: E402
from sd_unet_trt.trt_core.weight_sync import Merge, WeightSync  # noqa: E402
from sd_unet_trt.trt_core.weights import WeightsRecord  # noqa: E402

RANK = ALPHA = 32  # scale alpha / rank = 1
# the layers LoRA trainers target (as tests/real_webui/tiny_lora.py writes them)
LAYER = re.compile(r"^(input_blocks|middle_block|output_blocks)\.[\d.]+\."
                   r"(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))$")


class LoraLayer:
    """One layer of a network, as the Lora extension's NetworkModuleLora computes its change."""

    def __init__(self, net: "Network", up: torch.Tensor, down: torch.Tensor):
        self.network, self.up, self.down = net, up, down

    def calc_updown(self, orig_weight: torch.Tensor):
        up, down = self.up.to(orig_weight.device), self.down.to(orig_weight.device)
        updown = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(orig_weight.shape)
        return updown * (ALPHA / RANK) * self.network.unet_multiplier, None


class Network:
    def __init__(self, name: str, layers: dict[str, tuple[int, ...]], seed: int):
        self.name, self.te_multiplier, self.unet_multiplier, self.dyn_dim = name, 1.0, 1.0, None
        g = torch.Generator().manual_seed(seed)
        self.modules = {}
        for path, shape in layers.items():
            out_dim, in_dim, kernel = shape[0], shape[1], tuple(shape[2:])
            down = torch.randn((RANK, in_dim, *kernel), generator=g) / in_dim ** 0.5
            up = torch.randn((out_dim, RANK, *[1] * len(kernel)), generator=g) * 0.3 / RANK ** 0.5
            self.modules[path] = LoraLayer(self, up.half(), down.half())


def lora_layers(unet: torch.nn.Module) -> list[tuple[str, str, torch.nn.Module]]:
    return [(path, path, module) for path, module in unet.named_modules()
            if LAYER.match(path) and isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
            and module.weight.dim() in (2, 4) and module.weight.shape[2:] in ((), (1, 1))]


def merge_for(nets: list[Network], layers) -> Merge:
    if not nets:
        return Merge()
    touched = [layer for layer in layers if any(layer[1] in net.modules for net in nets)]
    names = frozenset(f"{path}.weight" for path, _, _ in touched)
    key = tuple((id(n), n.name, n.unet_multiplier) for n in nets)
    return Merge(names, merge_function(touched, nets, functional=False), key)


def run(work: Workload, device: torch.device, seconds: float) -> dict:
    log(f"{work.name}: building the torch engine (fp16)")
    unet = make_unet(work.family, device)
    profile = Profile.static(1, work.px, work.px)
    backend = get_backend("torch")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "engine.torch.zip"
        t0 = time.monotonic()
        backend.build(BuildRequest(Path("unused.onnx"), work.family, profile, "fp16", module=unet,
                                   device=device.type), path)
        build_s = time.monotonic() - t0
        engine = backend.load(path, work.name, work.family, profile, device=device.type)
    base = {k: v.detach().to("cpu", torch.float16) for k, v in unet.state_dict().items()}  # the WebUI's, on the CPU
    keys = {k: (id(v), v._version, v.data_ptr()) for k, v in base.items()}
    layers = lora_layers(unet)
    shapes = {path: tuple(module.weight.shape) for path, _, module in layers}
    style, other = Network("style", shapes, seed=1), Network("other", shapes, seed=2)
    router = Router.from_engines([engine])
    sync_ = WeightSync(WeightsRecord.of(base, "bench", "0" * 64), device)
    assert sync_.update(base, keys, Merge()) == {}
    inputs = [make_inputs(work, device, torch.float16, torch.Generator(device).manual_seed(i)) for i in range(3)]

    def check(nets: list[Network]) -> float:
        """The engine against an fp32 eager UNet with the same merged weights."""
        merged = merge_for(nets, layers)
        changed = {} if merged.apply is None else merged.apply({n: base[n].to(device) for n in merged.names})
        with torch.no_grad():
            saved = {n: unet.get_parameter(n).detach().clone() for n in changed}
            for n, value in changed.items():
                unet.get_parameter(n).copy_(value.float())
            ref = unet(*(v.float() for v in inputs[0]))
            for n, value in saved.items():
                unet.get_parameter(n).copy_(value)
        return rel_error(engine(*inputs[0]), ref)

    switches = [("first LoRA on (base weights copied once, on the GPU)", [style], 1.0),
                ("off", [], 1.0), ("on again", [style], 1.0), ("multiplier 0.5", [style], 0.5),
                ("another LoRA", [other], 1.0), ("two LoRAs", [style, other], 1.0), ("off", [], 1.0)]
    rows = []
    for what, nets, multiplier in switches:
        for net in nets:
            net.unet_multiplier = multiplier
        sync(device)
        t0 = time.perf_counter()
        targets = sync_.update(base, keys, merge_for(nets, layers), router.build_weights)
        sync(device)
        t1 = time.perf_counter()
        router.set_weights(targets or {})
        sync(device)
        t2 = time.perf_counter()
        row = {"switch": what, "seconds": t2 - t0, "merge_s": t1 - t0, "engine_s": t2 - t1,
               "weights": len(targets or {}), "rel_err": check(nets)}
        rows.append(row)
        log(f"  {what:55} {row['seconds'] * 1e3:8.1f} ms (merge {row['merge_s'] * 1e3:.1f}, engine "
            f"{row['engine_s'] * 1e3:.1f}), {row['weights']} weights, error vs fp32 {row['rel_err']:.1e}")
    with_lora = time_steps(lambda x: engine(*x), inputs, device, 50, seconds)["median_ms"]
    router.set_weights(sync_.update(base, keys, Merge()) or {})
    without = time_steps(lambda x: engine(*x), inputs, device, 50, seconds)["median_ms"]
    log(f"  step time: {without:.2f} ms without LoRA, {with_lora:.2f} ms with two LoRAs applied")
    engine.close()
    return {"model": work.name, "build_s": build_s, "lora_layers": len(layers), "rank": RANK, "switches": rows,
            "step_ms_without": without, "step_ms_with": with_lora}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="sd15,sdxl")
    p.add_argument("--device", default="cuda")
    p.add_argument("--seconds", type=float, default=3.0, help="per step timing")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(device), "models": []}
    for key in args.models.split(","):
        results["models"].append(run(WORKLOADS[key], device, args.seconds))
        (args.out / "lora_switch.json").write_text(json.dumps(results, indent=1))
    for model in results["models"]:
        print(f"\n{model['model']}: {model['lora_layers']} LoRA layers, rank {model['rank']}; step "
              f"{model['step_ms_without']:.2f} ms without, {model['step_ms_with']:.2f} ms with LoRA")
        for row in model["switches"]:
            print(f"  {row['switch']:55} {row['seconds'] * 1e3:8.1f} ms   error {row['rel_err']:.1e}")


if __name__ == "__main__":
    main()
