"""Threads on one router and on one engine. The WebUI's queue serializes generations; API callers, the
tab, library users and serving layers do not. Every call gets its own right output (or falls back
with a reason), no engine is closed or given new weights mid-call, and an absurd call is refused at
once without building anything per row."""
from __future__ import annotations

import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from sd_unet_trt.models.families import TINY
from sd_unet_trt.models.unet import seeded_unet
from sd_unet_trt.trt_core.backends.base import Engine
from sd_unet_trt.trt_core.backends.torch_compiled.engine import TorchCompiledEngine
from sd_unet_trt.trt_core.export import sample_inputs
from sd_unet_trt.trt_core.profiles import CallShape, Profile, Range
from sd_unet_trt.trt_core.router import EngineRecord, Router
from tests.trt_double.fixtures import TINY_PROFILE, backend, fake_trt, tiny_onnx, tiny_request, tiny_unet  # noqa: F401

BASE = Profile(Range(1, 1, 2), Range(64, 64, 128), Range(64, 64, 128), Range(75, 75, 150))  # rows 1-4, latent 8-16
HIRES = Profile(Range(1, 1, 2), Range(136, 256, 256), Range(136, 256, 256), Range(75, 75, 150))  # latent 17-32
BASE_SHAPES = [(1, 8, 8, 77), (2, 8, 8, 77), (2, 9, 8, 154), (1, 11, 13, 77), (4, 16, 16, 77), (2, 8, 12, 77)]
HIRES_SHAPES = [(2, 24, 24, 77), (1, 32, 20, 154)]
THREADS = 8


def calls(shapes) -> list[tuple[torch.Tensor, ...]]:
    """One input per (rows, latent h, latent w, context) shape, each from its own seed."""
    return [sample_inputs(TINY, rows, h, w, ctx, torch.float32, "cpu", torch.Generator().manual_seed(seed))
            for seed, (rows, h, w, ctx) in enumerate(shapes)]


def hammer(fn, n: int, threads: int = THREADS) -> list[tuple[int, object, str | None]]:
    """fn(i) for i < n on `threads` threads: (i, result, None) or (i, None, the exception as text)."""
    def guarded(i):
        try:
            return i, fn(i), None
        except Exception as e:
            return i, None, f"{type(e).__name__}: {e}"
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(guarded, range(n)))


def tally(results, expected) -> tuple[int, list[str]]:
    """How many outputs differ from the single-threaded ones, and the distinct exceptions."""
    wrong = sum(1 for i, out, err in results if err is None and not torch.equal(out, expected[i % len(expected)]))
    return wrong, sorted({err for _, _, err in results if err})


def test_threads_on_one_onnx_runtime_engine_each_get_their_own_output(ort_engine):
    _, engine = ort_engine("tiny", BASE)
    inputs = calls(BASE_SHAPES * 2)
    expected = [engine(*args) for args in inputs]
    wrong, errors = tally(hammer(lambda i: engine(*inputs[i % len(inputs)]), 48), expected)
    assert (wrong, errors) == (0, []), f"{wrong} of 48 outputs wrong; errors: {errors}"


def test_threads_through_one_router_are_all_served_right(ort_engine):
    _, base = ort_engine("tiny", BASE, "base")
    _, hires = ort_engine("tiny", HIRES, "hires")
    router = Router.from_engines([base, hires])
    inputs = calls(BASE_SHAPES + HIRES_SHAPES + [(7, 8, 8, 77)])  # 7 rows: split in two runs
    expected = [router.run(*args).output for args in inputs]
    results = hammer(lambda i: router.run(*inputs[i % len(inputs)]), 45)
    fell_back = [r.reason for _, r, err in results if err is None and not r.covered]
    wrong, errors = tally([(i, r.output, err) for i, r, err in results if err or r.covered], expected)
    assert (wrong, errors, fell_back, router.failed) == (0, [], [], {}), \
        (f"{wrong} wrong; errors {errors}; {len(fell_back)} fell back: {sorted(set(fell_back))[:2]}; "
         f"set aside {router.failed}")


class Watched(Engine):
    """A loaded engine (100 bytes, for budgets) running on a real one that outlives it (loads stay
    cheap); it notes being closed mid-call or called once closed, and then fails as a closed engine."""
    memory_bytes = 100

    def __init__(self, inner: Engine, name: str, profile: Profile, problems: list[str]):
        self.inner, self.problems = inner, problems
        self.name, self.family, self.profile = name, inner.family, profile
        self._state = threading.Lock()
        self.running, self.closed = 0, False

    def __call__(self, x, timesteps, context, y=None):
        with self._state:
            if self.closed:
                self.problems.append(f"{self.name} called after close")
                raise RuntimeError(f"engine {self.name} is closed")
            self.running += 1
        try:
            time.sleep(0.002)  # the others get to act while this call runs
            return self.inner(x, timesteps, context, y)
        finally:
            with self._state:
                self.running -= 1

    def close(self):
        with self._state:
            if self.running:
                self.problems.append(f"{self.name} closed mid-call")
            self.closed = True


def test_unload_close_and_eviction_never_pull_an_engine_from_a_running_call(ort_engine):
    _, real = ort_engine("tiny", BASE, "real")
    problems, made = [], []

    def record(name, profile):
        def load():
            made.append(Watched(real, name, profile, problems))
            return made[-1]
        return EngineRecord(name, TINY, profile, load)
    router = Router([record("base", BASE), record("hires", HIRES)])
    inputs = calls(BASE_SHAPES[:3] + HIRES_SHAPES)
    expected = [real(*args) for args in inputs]

    done, disturber_errors = threading.Event(), []

    def disturb():  # an API delete, the hook's close, a lowered VRAM budget: over and over
        actions = [lambda: router.unload("base"), router.close, lambda: setattr(router, "memory_budget_bytes", 150),
                   lambda: router.unload("hires"), lambda: setattr(router, "memory_budget_bytes", None)]
        while not done.is_set():
            for act in actions:
                try:
                    act()
                except Exception as e:
                    disturber_errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.003)
    disturber = threading.Thread(target=disturb)
    disturber.start()
    try:
        results = hammer(lambda i: router.run(*inputs[i % len(inputs)]), 40, threads=4)
    finally:
        done.set()
        disturber.join()
    router.close()
    fell_back = [r.reason for _, r, err in results if err is None and not r.covered]
    wrong, errors = tally([(i, r.output, err) for i, r, err in results if err or r.covered], expected)
    left_open = [e.name for e in made if not e.closed or e.running]
    assert (problems, wrong, errors, fell_back, disturber_errors, left_open) == ([], 0, [], [], [], []), \
        (f"{len(problems)} problems {sorted(set(problems))}; {wrong} wrong; errors {errors}; "
         f"{len(fell_back)} fell back: {sorted(set(fell_back))[:2]}; disturber {disturber_errors[:2]}; "
         f"left open {left_open}")
    assert len(made) > 2  # the engines really were unloaded and loaded again


def test_threads_on_one_tensorrt_engine_each_get_their_own_output(backend, tiny_onnx, tmp_path):
    path = tmp_path / "tiny.trt"
    backend.build(tiny_request(tiny_onnx), path)
    engine = backend.load(path, "tiny", TINY, TINY_PROFILE, device="cpu")
    inputs = calls(BASE_SHAPES)
    expected = [engine(*args) for args in inputs]
    wrong, errors = tally(hammer(lambda i: engine(*inputs[i % len(inputs)]), 60), expected)
    assert (wrong, errors) == (0, []), f"{wrong} of 60 outputs wrong; errors: {errors}"


class Pace:
    """Slows a function to 0.2 s (a long UNet run) and tells when a run entered it and when one left."""

    def __init__(self) -> None:
        self.entered, self.left = threading.Event(), threading.Event()

    def slow(self, fn):
        def run(*args, **kwargs):
            self.entered.set()
            time.sleep(0.2)
            try:
                return fn(*args, **kwargs)
            finally:
                self.left.set()
        return run


class SlowContext:
    """The double's execution context with slow runs (the double refuses patched attributes)."""

    def __init__(self, inner, pace: Pace):
        self._inner, self.execute_async_v3 = inner, pace.slow(inner.execute_async_v3)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def slow_engine(kind: str, request, tmp_path, pace: Pace) -> Engine:
    """An engine of `kind` whose runs are slowed where it computes."""
    if kind == "onnxruntime":
        _, engine = request.getfixturevalue("ort_engine")("tiny", BASE)
        engine.session.run_with_iobinding = pace.slow(engine.session.run_with_iobinding)
        return engine
    if kind == "tensorrt":
        trt_backend, path = request.getfixturevalue("backend"), tmp_path / "tiny.trt"
        trt_backend.build(tiny_request(request.getfixturevalue("tiny_onnx")), path)
        engine = trt_backend.load(path, "tiny", TINY, TINY_PROFILE, device="cpu")
        engine.context = SlowContext(engine.context, pace)
        return engine
    unet = seeded_unet(TINY.unet_config(), seed=4).eval()
    return TorchCompiledEngine("tiny", TINY, BASE, pace.slow(torch.no_grad()(unet)), torch.device("cpu"),
                               torch.float32, cuda_graphs=False)


def while_running(engine: Engine, pace: Pace, args, act) -> tuple[torch.Tensor, bool]:
    """Run `act` while a call of `engine` is mid-run: the call's output, and whether the call's run
    had ended by the time `act` returned."""
    pace.entered.clear()
    pace.left.clear()
    with ThreadPoolExecutor(1) as pool:
        call = pool.submit(engine, *args)
        assert pace.entered.wait(10), "the call never started"
        act()
        ended = pace.left.is_set()
        return call.result(), ended


@pytest.mark.parametrize("kind", ["onnxruntime", "tensorrt", "torch"])
def test_close_waits_for_the_running_call(kind, request, tmp_path):
    pace = Pace()
    engine = slow_engine(kind, request, tmp_path, pace)
    args = calls([(2, 8, 8, 77)])[0]
    expected = engine(*args)
    output, ended = while_running(engine, pace, args, engine.close)
    assert ended, f"{kind}: close() returned while a call was still running on the engine"
    assert torch.equal(output, expected)
    with pytest.raises(RuntimeError, match="is closed"):
        engine(*args)


@pytest.mark.parametrize("kind", ["onnxruntime", "tensorrt"])
def test_new_weights_wait_for_the_running_call(kind, request, tmp_path):
    pace = Pace()
    engine = slow_engine(kind, request, tmp_path, pace)
    args = calls([(2, 8, 8, 77)])[0]
    before = engine(*args)
    change = {"out.2.bias": torch.full((4,), 0.25)}
    output, ended = while_running(engine, pace, args, lambda: engine.set_weights(change))
    assert ended, f"{kind}: set_weights() returned while a call was still running on the engine"
    assert torch.equal(output, before), f"{kind}: a call that started before set_weights ran with the new weights"
    assert not torch.equal(engine(*args), before)


class Cheap(Engine):
    """Free to load and run; reading its size lets other threads in, as a real engine's property may."""

    def __init__(self, name: str, profile: Profile):
        self.name, self.family, self.profile = name, TINY, profile

    @property
    def memory_bytes(self) -> int:
        time.sleep(0)
        return 1

    def __call__(self, x, timesteps, context, y=None):
        return torch.zeros_like(x)


def test_plan_and_loaded_bytes_while_another_thread_loads_and_unloads():
    profiles = [Profile.static(1, 64 + 8 * i, 64) for i in range(40)]
    router = Router([EngineRecord(f"e{i}", TINY, p, lambda i=i, p=p: Cheap(f"e{i}", p))
                     for i, p in enumerate(profiles)])
    inputs = [(torch.zeros(1, 4, 8 + i, 8), torch.zeros(1), torch.zeros(1, 77, 768)) for i in range(40)]
    done, errors = threading.Event(), []

    def read():
        while not done.is_set():
            try:
                router.loaded_bytes, router.loaded, router.plan(CallShape.of(inputs[7][0], inputs[7][2]))
            except Exception as e:
                errors.append(f"{type(e).__name__}: {e}")
    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(5):
            for args in inputs:
                assert router.run(*args).covered
            router.close()
    finally:
        done.set()
        reader.join()
    assert errors == [], f"{len(errors)} reads failed: {sorted(set(errors))}"


@contextlib.contextmanager
def address_space_cap(extra: int):
    """A runaway allocation becomes a MemoryError instead of eating the machine (Linux; elsewhere nothing)."""
    try:
        import resource
        with open("/proc/self/statm") as f:
            size = int(f.read().split()[0]) * resource.getpagesize()
    except (ImportError, OSError):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = size + extra if hard == resource.RLIM_INFINITY else min(size + extra, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_a_call_of_two_billion_rows_is_refused_at_once():
    router = Router.from_engines([Cheap("base", BASE)])
    rows = 2_000_000_000  # batch 1e9 with its negative prompt
    x = torch.zeros(1, 4, 8, 8).expand(rows, -1, -1, -1)  # no memory behind the rows
    timesteps, context = torch.zeros(1).expand(rows), torch.zeros(1, 77, 768).expand(rows, -1, -1)
    with address_space_cap(256 << 20):
        start = time.perf_counter()
        plan = router.plan(CallShape(rows, 4, 8, 8, 77, 768, None))
        result = router.run(x, timesteps, context)
        elapsed = time.perf_counter() - start
    assert not plan.covered and not result.covered and result.reason == plan.reason
    assert "base: 2000000000 rows would need more than 64 runs of at most 4 rows" in plan.reason, plan.reason
    assert elapsed < 1, f"took {elapsed:.1f} s"


class Gate:
    """A load that waits until it is let through, and says when it started."""

    def __init__(self) -> None:
        self.started, self.open = threading.Event(), threading.Event()
        self.loads = 0

    def load(self, engine: Engine):
        def slow():
            self.loads += 1
            self.started.set()
            assert self.open.wait(10), "the load was never let through"
            return engine
        return slow


def test_a_slow_load_holds_up_no_other_threads_plan_or_loaded_engine():
    """Deserializing a plan takes seconds: meanwhile other threads plan and run on loaded engines."""
    gate = Gate()
    router = Router([EngineRecord("base", TINY, BASE, lambda: Cheap("base", BASE)),
                     EngineRecord("hires", TINY, HIRES, gate.load(Cheap("hires", HIRES)))])
    base_call, hires_call = calls([BASE_SHAPES[1], HIRES_SHAPES[0]])
    assert router.run(*base_call).engine == "base"
    with ThreadPoolExecutor(2) as pool:
        loading = pool.submit(router.run, *hires_call)
        try:
            assert gate.started.wait(10)
            other = pool.submit(lambda: (router.plan(CallShape.of(base_call[0], base_call[2])).record.id,
                                         router.run(*base_call).engine, router.loaded))
            planned, ran, loaded = other.result(timeout=5)  # before: waited for the load, and timed out
        finally:
            gate.open.set()
        assert (planned, ran, loaded) == ("base", "base", ["base"])
        assert loading.result(timeout=10).engine == "hires" and router.loaded == ["base", "hires"]


def test_threads_waiting_for_one_slow_load_load_it_once():
    gate = Gate()
    router = Router([EngineRecord("base", TINY, BASE, gate.load(Cheap("base", BASE)))])
    call = calls([BASE_SHAPES[1]])[0]
    with ThreadPoolExecutor(4) as pool:
        runs = [pool.submit(router.run, *call) for _ in range(4)]
        assert gate.started.wait(10)
        time.sleep(0.05)  # the other three are waiting for it
        gate.open.set()
        assert [run.result(timeout=10).engine for run in runs] == ["base"] * 4
    assert gate.loads == 1


def test_close_and_unload_wait_for_the_load_in_progress_and_leave_nothing_open():
    for take_out in (Router.close, lambda router: router.unload("base")):
        gate, closed = Gate(), []

        class Noted(Cheap):
            def close(self):
                closed.append(self.name)
        router = Router([EngineRecord("base", TINY, BASE, gate.load(Noted("base", BASE)))])
        with ThreadPoolExecutor(2) as pool:
            run = pool.submit(router.run, *calls([BASE_SHAPES[1]])[0])
            assert gate.started.wait(10)
            taking_out = pool.submit(take_out, router)
            time.sleep(0.05)
            waited = not taking_out.done()
            gate.open.set()
            taking_out.result(timeout=10)
            assert run.result(timeout=10).engine == "base"
        assert (waited, router.loaded, closed) == (True, [], ["base"])


def test_records_replaced_during_a_load_are_routed_to_and_the_dropped_engine_is_closed():
    gate, closed = Gate(), []

    class Noted(Cheap):
        def close(self):
            closed.append(self.name)
    dropped = EngineRecord("dropped", TINY, BASE, gate.load(Noted("dropped", BASE)))
    kept = EngineRecord("kept", TINY, BASE, lambda: Noted("kept", BASE))
    router = Router([dropped, kept])
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(router.run, *calls([BASE_SHAPES[1]])[0])
        assert gate.started.wait(10)
        router.replace_records([kept])  # e.g. the hook's records read again
        gate.open.set()
        assert run.result(timeout=10).engine == "kept"
    assert (router.loaded, closed) == (["kept"], ["dropped"])
    router.replace_records([])
    assert (router.loaded, closed) == ([], ["dropped", "kept"])
