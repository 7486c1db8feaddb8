"""Every call pattern of docs/DESIGN.md's table, through the router, on real ONNX Runtime engines."""
import pytest
import torch

from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.backends.base import Engine, EngineUnavailable
from sd_unet_trt.trt_core.router import EngineRecord, Router, split_rows

BASE = Profile(Range(1, 1, 2), Range(64, 64, 128), Range(64, 64, 128), Range(75, 75, 150))  # rows 1..4
HIRES = Profile(Range(1, 1, 2), Range(136, 256, 256), Range(136, 256, 256), Range(75, 75, 150))


def inputs(rows, h=8, w=8, ctx=77, channels=4, context_dim=768, y_dim=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, channels, h, w, generator=g)
    t = torch.rand(rows, generator=g) * 999
    c = torch.randn(rows, ctx, context_dim, generator=g)
    return (x, t, c) if y_dim is None else (x, t, c, torch.randn(rows, y_dim, generator=g))


def assert_matches(unet, result, args):
    assert result.covered, result.reason
    with torch.no_grad():
        expected = unet(*args)
    assert result.output.shape == expected.shape and result.output.dtype == args[0].dtype
    assert torch.allclose(result.output, expected, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tiny(ort_engine):
    unet, engine = ort_engine("tiny", BASE, "base")
    return unet, Router.from_engines([engine])


@pytest.mark.parametrize("case, args", [
    ("batch size B=2, defaults: one call of 2B rows", dict(rows=4)),
    ("AND with 2 sub-prompts, B=1: 3 rows", dict(rows=3)),
    ("prompt over 75 tokens, short negative: cond call, 154 context", dict(rows=1, ctx=154)),
    ("... then the uncond call, 77 context", dict(rows=1, ctx=77)),
    ("pad_cond_uncond: 2B rows at 154", dict(rows=2, ctx=154)),
    ("batch_cond_uncond off: B rows per call", dict(rows=2)),
    ("negative guidance min sigma: cond rows only", dict(rows=1)),
    ("72x64 px: multiple of 8, not of 64", dict(rows=2, h=9, w=8)),
    ("odd latent both ways", dict(rows=2, h=11, w=13)),
])
def test_call_table_rows_run_on_the_engine(tiny, case, args):
    unet, router = tiny
    call = inputs(**args)
    result = router.run(*call)
    assert result.engine == "base" and result.chunks == 1
    assert_matches(unet, result, call)


def test_batch_too_large_is_split_into_chunks_that_fit(tiny):
    unet, router = tiny
    call = inputs(rows=7)  # B=3 with an AND prompt -> more rows than the engine's 4
    result = router.run(*call)
    assert result.chunks == 2
    assert_matches(unet, result, call)


def test_uncovered_calls_answer_with_the_reason_and_never_raise(tiny):
    _, router = tiny
    for args, words in [(dict(rows=2, h=32, w=32), "256x256 px is outside 64-128x64-128 px"),
                        (dict(rows=2, ctx=231), "225 prompt tokens"),
                        (dict(rows=2, channels=9), "9 input channels")]:
        result = router.run(*inputs(**args))
        assert not result.covered and result.output is None
        assert words in result.reason and "no engine covers" in result.reason


def test_hires_fix_uses_one_engine_per_pass(ort_engine):
    unet, base = ort_engine("tiny", BASE, "first pass")
    _, hires = ort_engine("tiny", HIRES, "second pass")
    router = Router.from_engines([hires, base])
    first, second = inputs(rows=2, h=12, w=12), inputs(rows=2, h=24, w=24)
    r1, r2 = router.run(*first), router.run(*second)
    assert (r1.engine, r2.engine) == ("first pass", "second pass")
    assert_matches(unet, r1, first)
    assert_matches(unet, r2, second)


def test_inpainting_9_channels(ort_engine):
    unet, engine = ort_engine("tiny-inpaint", BASE)
    call = inputs(rows=2, channels=9)
    assert_matches(unet, Router.from_engines([engine]).run(*call), call)


def test_sdxl_y_is_routed_and_split_with_its_rows(ort_engine):
    unet, engine = ort_engine("tiny-xl", BASE)
    router = Router.from_engines([engine])
    for rows in (2, 6):
        call = inputs(rows=rows, context_dim=2048, y_dim=2816)
        assert_matches(unet, router.run(*call), call)


def test_prefers_an_engine_that_needs_no_split_then_the_closest_opt(ort_engine):
    unet, small = ort_engine("tiny", BASE, "small")
    _, wide = ort_engine("tiny", Profile(Range(1, 2, 4), Range(64, 96, 128), Range(64, 96, 128), Range(75, 75, 150)), "wide")
    router = Router.from_engines([small, wide])
    assert router.run(*inputs(rows=6)).engine == "wide"  # small would need a split
    assert router.run(*inputs(rows=2, h=8, w=8)).engine == "small"  # opt 64 px
    assert router.run(*inputs(rows=4, h=12, w=12)).engine == "wide"  # opt 96 px, 4 rows


class Failing:
    def __init__(self, engine):
        self.inner, self.name, self.family, self.profile = engine, "broken", engine.family, engine.profile
        self.memory_bytes, self.calls = 0, 0

    def __call__(self, *args):
        self.calls += 1
        raise RuntimeError("CUDA error: an illegal memory access")

    def close(self):
        pass


def test_a_failing_engine_is_set_aside_and_the_next_one_serves(ort_engine):
    unet, good = ort_engine("tiny", BASE, "good")
    broken = Failing(good)
    router = Router.from_engines([broken, good])
    broken.profile = BASE  # equal rank: the broken one is tried first (it is loaded first)
    call = inputs(rows=2)
    for _ in range(3):
        assert_matches(unet, router.run(*call), call)
    assert broken.calls == 1 and "illegal memory access" in router.failed["broken"]


def test_load_failure_is_an_uncovered_answer(ort_engine):
    _, engine = ort_engine("tiny", BASE)

    def load():
        raise ValueError("x.trt is not a TensorRT engine")
    router = Router([EngineRecord("bad", engine.family, BASE, load)])
    result = router.run(*inputs(rows=2))
    assert not result.covered and "not a TensorRT engine" in result.reason


def test_memory_budget_unloads_the_least_recently_used(ort_engine):
    _, engine = ort_engine("tiny", BASE)
    loads, closed = [], []

    class Sized(Engine):
        memory_bytes = 100

        def __init__(self, name, profile):
            self.name, self.family, self.profile = name, engine.family, profile

        def __call__(self, x, t, c, y=None):
            return engine(x, t, c, y)

        def close(self):
            closed.append(self.name)

    def record(name, profile):
        def load():
            loads.append(name)
            return Sized(name, profile)
        return EngineRecord(name, engine.family, profile, load)
    router = Router([record("a", BASE), record("b", HIRES)], memory_budget_bytes=150)
    router.run(*inputs(rows=2))
    router.run(*inputs(rows=2, h=24, w=24))
    router.run(*inputs(rows=2))
    assert loads == ["a", "b", "a"] and closed == ["a", "b"]
    assert router.loaded == ["a"]


def test_split_rows_is_even_and_minimal():
    assert split_rows(7, 4) == [4, 3]
    assert split_rows(9, 4) == [3, 3, 3]
    assert split_rows(4, 4) == [4]


class Unavailable(Failing):
    def __call__(self, *args):
        self.calls += 1
        raise EngineUnavailable("triton 127.0.0.1:1/m did not answer (ConnectionRefusedError)")


def test_a_preferred_engine_goes_first_and_one_that_cannot_answer_passes_the_call_on(ort_engine):
    """A server's engine (preferred) is chosen before a loaded local one; when it does not answer,
    the local one serves that call, the result names it, and the next call asks the server again."""
    unet, local = ort_engine("tiny", BASE, "local")
    server = Unavailable(local)
    router = Router([EngineRecord("local", local.family, BASE, lambda: local, label="local"),
                     EngineRecord("server", local.family, BASE, lambda: server, label="server", preferred=True)])
    call = inputs(rows=2)
    for calls in (1, 2):
        result = router.run(*call)
        assert_matches(unet, result, call)
        assert result.engine == "local" and result.passed_over == ("server",) and server.calls == calls
    assert not router.failed
