"""The UNet hook's own CPU work on a full-size SD1.5 UNet (issue 20, item 5: at most 2% of a step),
per sampling pass and per call, in the WebUI test double with the built-in Lora extension loaded
(as in the WebUI, where it always is) and an engine that does no work. Not a test: prints a
table of the fastest and the median run of each (the fastest is the steadier figure on a
shared machine). Random weights; nothing downloaded.

On the H100 an SD1.5 512 px step (batch 1, CFG in one call) took 7.41 ms; the hook's share there
was 0.8 ms/step of per-pass reading (20 steps a pass) and 0.28 ms/step per call.

Run from the repository root: python -m bench.hook_overhead [--repeats N]"""
from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tests.webui_double import harness  # installs the double's `modules`

from modules import script_callbacks, shared  # noqa: E402
from sd_unet_trt.models import unet as arch  # noqa: E402
from sd_unet_trt.models.families import family_named  # noqa: E402
from sd_unet_trt.scripts.trt_unet_webui import forward_names, generation, hook, live_weights, module_walk  # noqa: E402
from sd_unet_trt.trt_core.backends.base import Engine  # noqa: E402
from sd_unet_trt.trt_core.profiles import CallShape, Profile, Range  # noqa: E402
from sd_unet_trt.trt_core.router import Router  # noqa: E402
from sd_unet_trt.trt_core.weight_sync import Merge, WeightSync  # noqa: E402
from sd_unet_trt.trt_core.weights import WeightsRecord  # noqa: E402

SHA = "5d" * 32
STEP_MS_H100 = 7.41  # SD1.5 512 px, batch 1, Euler a, torch-backend fp16 engine (bench/webui_gpu)
STEPS_PER_PASS = 20


class Passthrough(Engine):
    """An engine that returns its input: what is left of a call is the hook's and the router's."""

    def __init__(self, profile: Profile):
        self.name, self.family, self.profile = "passthrough", family_named("sd1"), profile

    def __call__(self, x, timesteps, context, y=None):
        return x


def timed_ms(fn, repeats: int) -> tuple[float, float]:
    """(fastest, median) milliseconds of `repeats` runs."""
    fn()  # warm
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return min(samples), statistics.median(samples)


def session(models: Path):
    """The double's WebUI with a full-size SD1.5 checkpoint loaded and the Lora extension's layer
    names assigned (its on_model_loaded does that in the WebUI); a TrtUnet whose checkpoint engines
    are one passthrough engine and the weights record of the loaded UNet."""
    unet = harness.webui_unet(arch.seeded_unet(arch.SD15, seed=0))
    harness.start(models, unet, "sd15", SHA)
    harness.install_lora(models / "Lora", {})
    import networks
    networks.assign_network_names_to_compvis_modules(shared.sd_model)
    trt = hook.TrtUnet()
    profile = Profile(Range(1, 1, 4), Range(512, 512, 768), Range(512, 512, 768), Range(75, 75, 150))
    router = Router.from_engines([Passthrough(profile)])
    record = WeightsRecord.of(unet.state_dict(), "module in memory", SHA)
    trt.checkpoints[SHA] = hook.CheckpointEngines("sd15", router, WeightSync(record, torch.device("cpu")),
                                                  hook.engines_signature())
    generation.begin()
    return unet, trt, router


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=30, help="timed runs of each per-pass row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        unet, trt, router = session(Path(folder))
        trt.prepare()  # the first pass fingerprints every weight once
        assert not trt.problem, trt.problem
        live = live_weights.describe(unet, False)
        sync = trt.checkpoints[SHA].sync
        x, t, c = torch.randn(2, 4, 64, 64), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768)
        call = CallShape.of(x, c)
        record = router.records[0]

        def checkout():
            router._release(router._checkout(record))

        def full_pass():
            trt.request_sync()
            trt.prepare()

        per_pass = [
            ("live_weights.describe", lambda: live_weights.describe(unet, False)),
            ("  forward_problem", lambda: live_weights.forward_problem(module_walk.walk(unet).modules)),
            ("forward_names.problem", forward_names.problem),
            ("WeightSync.update (unchanged)", lambda: sync.update(live.base, live.keys, Merge(),
                                                                   router.build_weights)),
            ("engines_signature (manifest stat)", hook.engines_signature),
            ("whole pass: request_sync + prepare", full_pass),
        ]
        call_repeats = args.repeats * 100
        per_call = [
            ("prepare (nothing changed)", trt.prepare),
            ("CallShape.of", lambda: CallShape.of(x, c)),
            ("router.plan", lambda: router.plan(call)),
            ("router checkout + release", checkout),
            ("router.run (passthrough engine)", lambda: router.run(x, t, c)),
            ("TrtUnet.forward (passthrough engine)", lambda: trt.forward(x, t, c)),
        ]
        print(f"SD1.5 UNet: {len(list(unet.modules()))} modules, {len(live.base)} weights; torch threads 1; "
              f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()}")
        print(f"{'per pass':40s} {'ms min':>9s} {'median':>9s} {'ms/step':>9s}")
        for name, fn in per_pass:
            fastest, median = timed_ms(fn, args.repeats)
            print(f"{name:40s} {fastest:9.3f} {median:9.3f} {fastest / STEPS_PER_PASS:9.4f}")
        print(f"{'per call':40s} {'us min':>9s} {'median':>9s}")
        for name, fn in per_call:
            fastest, median = timed_ms(fn, call_repeats)
            print(f"{name:40s} {fastest * 1e3:9.1f} {median * 1e3:9.1f}")
        whole = timed_ms(full_pass, args.repeats)[0] / STEPS_PER_PASS + timed_ms(
            lambda: trt.forward(x, t, c), call_repeats)[0]
        print(f"hook per step (fastest pass / {STEPS_PER_PASS} + fastest forward): {whole:.3f} ms = "
              f"{whole / STEP_MS_H100:.1%} of the H100's {STEP_MS_H100} ms step (this CPU, not the GPU host's)")
        assert not generation.current().infotext() or "fallback" not in generation.current().infotext()
        script_callbacks.script_unloaded_callback()


if __name__ == "__main__":
    main()
