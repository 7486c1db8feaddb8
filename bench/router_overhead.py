"""The router's own cost per UNet call: Router.run around an engine that does no work, against
calling that engine directly. Not a test: prints microseconds per call (median of many).
Run from the repository root: python -m bench.router_overhead"""
from __future__ import annotations

import statistics
import time

import torch

from sd_unet_trt.models.families import family_named
from sd_unet_trt.trt_core.backends.base import Engine
from sd_unet_trt.trt_core.profiles import CallShape, Profile, Range
from sd_unet_trt.trt_core.router import Router


class Passthrough(Engine):
    def __init__(self, name: str, profile: Profile):
        self.name, self.family, self.profile = name, family_named("sd1"), profile

    def __call__(self, x, timesteps, context, y=None):
        return x


def median_us(fn, repeats: int = 20000) -> float:
    for _ in range(200):
        fn()
    samples = []
    for _ in range(repeats // 100):
        start = time.perf_counter()
        for _ in range(100):
            fn()
        samples.append((time.perf_counter() - start) / 100 * 1e6)
    return statistics.median(samples)


def main() -> None:
    x, t, c = torch.randn(2, 4, 64, 64), torch.tensor([500.0, 500.0]), torch.randn(2, 77, 768)
    profiles = [Profile(Range(1, 1, 4), Range(h, h, h + 256), Range(h, h, h + 256), Range(75, 75, 150))
                for h in (256, 512, 768, 1024)]
    engines = [Passthrough(f"engine {i}", p) for i, p in enumerate(profiles)]
    direct = median_us(lambda: engines[1](x, t, c))
    for count in (1, 4):
        router = Router.from_engines(engines[1:1 + count] if count == 1 else engines)
        routed = median_us(lambda: router.run(x, t, c))
        print(f"{count} engine(s) loaded: router.run {routed:.1f} us/call, direct {direct:.2f} us/call, "
              f"overhead {routed - direct:.1f} us/call")
    split = Router.from_engines([engines[1]])
    big = (torch.randn(12, 4, 64, 64), torch.full((12,), 500.0), torch.randn(12, 77, 768))
    chunks = split.plan(CallShape.of(big[0], big[2])).chunks
    print(f"12 rows split into chunks of {chunks}: router.run {median_us(lambda: split.run(*big), 5000):.1f} us/call")


if __name__ == "__main__":
    main()
