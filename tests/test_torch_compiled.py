"""The PyTorch-compiled backend (torch.export + Inductor standalone compile) on the CPU with the tiny UNet.

One real build runs through the pipeline (export, ONNX check, Inductor compile, engine check,
manifest) and every test below uses it; the CUDA-graph path is exercised by bench/unet_speed.py
on a GPU, which checks it against fp32 on fresh inputs.
"""
from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from sd_unet_trt.models.families import FAMILIES, TINY
from sd_unet_trt.models.unet import CrossAttention, UNetCall, seeded_unet
from sd_unet_trt.trt_core.backends import get_backend
from sd_unet_trt.trt_core.backends.base import BuildRequest, EngineFileError, WeightsUnsupported
from sd_unet_trt.trt_core.backends.torch_compiled import TorchCompiledBackend
from sd_unet_trt.trt_core.backends.torch_compiled.attention import (fused_projections, sdpa_choices, sdpa_preference,
                                                                    sdpa_scope)
from sd_unet_trt.trt_core.backends.torch_compiled.backend import _module_for
from sd_unet_trt.trt_core.backends.torch_compiled.engine import TorchCompiledEngine
from sd_unet_trt.trt_core.backends.torch_compiled.engine_file import (ARTIFACT, FORMAT, RECORD, WEIGHTS, read_metadata,
                                                                      read_weights)
from sd_unet_trt.trt_core.manifest import CheckpointId
from sd_unet_trt.trt_core.unet_source import ModuleUNet
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import Profile, Range
from sd_unet_trt.trt_core.router import Router
from sd_unet_trt.trt_core.workspace import Workspace

PROFILE = Profile.static(1, 64, 64)  # rows 1-2: compiled for 2, one row is padded


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(workspace, manifest entry, source UNet): the tiny UNet compiled once for the CPU in fp32."""
    root = tmp_path_factory.mktemp("torch-backend")
    source = seeded_unet(TINY.unet_config(), seed=3)
    checkpoint = CheckpointId.of("ab" * 32, "tiny-test")
    entry = build_engine(ModuleUNet(source, checkpoint, TINY), PROFILE, TorchCompiledBackend(), Workspace(root),
                         precision="fp32", device="cpu")
    return Workspace(root), entry, source


@pytest.fixture
def engine(built):
    workspace, entry, _ = built
    engine = TorchCompiledBackend().load(workspace.engine_dir / entry.file, entry.id, TINY, PROFILE, device="cpu")
    yield engine
    engine.close()


def _inputs(rows: int, seed: int, px: int = 64, ctx: int = 77):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, 4, px // 8, px // 8, generator=g), torch.rand(rows, generator=g) * 999,
            torch.randn(rows, ctx, 768, generator=g))


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()



def with_member_changed(source, target, member, change):
    """A copy of the engine zip `source` at `target` with one member's bytes passed through `change`."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, change(data) if item.filename == member else data)
    return target

def test_registry_maps_the_backend():
    backend = get_backend("torch")
    assert isinstance(backend, TorchCompiledBackend)
    assert backend.availability().available
    assert backend.version().startswith(f"torch-{torch.__version__}")
    assert backend.version().endswith(f"+format-{FORMAT.rsplit('/', 1)[1]}")  # older files show as stale
    assert backend.device_arch("cpu") == "cpu"


def test_pipeline_registers_the_engine(built):
    workspace, entry, _ = built
    assert entry.backend == "torch" and entry.precision == "fp32" and entry.gpu_arch == "cpu"
    assert entry.file.endswith(".torch.zip") and (workspace.engine_dir / entry.file).stat().st_size == entry.file_size
    assert entry.accuracy["max_rel"] <= 1e-3
    assert entry.details["compile_seconds"] > 0
    assert [e.id for e in workspace.manifest().entries()] == [entry.id]


def test_engine_matches_the_unet_on_fresh_inputs(engine, built):
    source = built[2]
    for rows, seed in [(2, 11), (1, 12), (2, 13)]:
        x, t, c = _inputs(rows, seed)
        with torch.no_grad():
            ref = source(x, t, c)
        out = engine(x, t, c)
        assert out.shape == ref.shape and out.dtype == x.dtype and out.is_contiguous()
        assert _rel(out, ref) < 1e-4


def test_engine_returns_the_callers_dtype(engine, built):
    x, t, c = _inputs(2, 21)
    out = engine(x.half(), t.half(), c.half())
    assert out.dtype == torch.float16
    with torch.no_grad():
        ref = built[2](x.half().float(), t.half().float(), c.half().float())
    assert _rel(out, ref) < 1e-3


def test_engine_takes_changed_weights_in_place_and_goes_back(engine, built):
    """A LoRA's kind of change, on weights the compiled graph holds fused (q/k/v) or channels-last
    (convolutions): the engine then computes what the changed UNet computes, and the original
    values bring it back."""
    import copy

    source = built[2]
    q, k, conv = ("input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
                  "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "input_blocks.1.0.in_layers.2.weight")
    changed = copy.deepcopy(source)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name in (q, k, conv):
            changed.get_parameter(name).add_(torch.randn(changed.get_parameter(name).shape, generator=g) * 0.05)
    x, t, c = _inputs(2, 41)
    with torch.no_grad():
        expected, original = changed(x, t, c), source(x, t, c)
    held = engine.weights_of([q, k, conv, "nope"])
    assert set(held) == {q, k, conv}  # what it was built with, read where it keeps them (fused, NHWC)
    assert all(torch.equal(held[name], source.get_parameter(name)) for name in (q, k, conv))
    engine.set_weights({name: changed.get_parameter(name) for name in (q, k, conv)})
    assert _rel(engine(x, t, c), expected) < 1e-4 and _rel(engine(x, t, c), original) > 1e-3
    engine.set_weights({name: source.get_parameter(name) for name in (q, k, conv)})
    assert _rel(engine(x, t, c), original) < 1e-4
    with pytest.raises(WeightsUnsupported, match="has no weight nope"):
        engine.set_weights({"nope": torch.zeros(1)})
    with pytest.raises(WeightsUnsupported, match=r"the new value is \[3\]"):
        engine.set_weights({q: torch.zeros(3)})
    assert _rel(engine(x, t, c), original) < 1e-4


def test_engine_refuses_calls_outside_its_profile(engine):
    with pytest.raises(ValueError, match="128x128 px is outside 64x64"):
        engine(*_inputs(2, 1, px=128))
    with pytest.raises(ValueError, match="3 rows is above the engine's maximum of 2"):
        engine(*_inputs(3, 1))
    with pytest.raises(ValueError, match="150 prompt tokens"):
        engine(*_inputs(2, 1, ctx=154))
    x, t, c = _inputs(2, 1)
    with pytest.raises(ValueError, match=r"timesteps must have shape \[2\]"):
        engine(x, t[:1], c)


def test_router_serves_calls_through_the_engine(engine, built):
    router = Router.from_engines([engine])
    x, t, c = _inputs(4, 31)  # above the engine's 2 rows: the router splits it
    result = router.run(x, t, c)
    assert result.covered and result.chunks == 2
    with torch.no_grad():
        ref = built[2](x, t, c)
    assert _rel(result.output, ref) < 1e-4
    assert not router.run(*_inputs(2, 1, px=128)).covered


def test_metadata_is_readable_without_loading(built):
    workspace, entry, _ = built
    record = read_metadata(workspace.engine_dir / entry.file)
    assert record["family"] == "tiny" and record["precision"] == "fp32" and record["device"] == "cpu"
    assert Profile.from_dict(record["profile"]) == PROFILE and record["torch"] == torch.__version__


def test_convolution_weights_are_stored_channels_last(built):
    """Every convolution weight comes back as an NCHW-shaped, channels-last tensor equal to the
    source UNet's weight; those with kernels above 1x1 are stored as NHWC bytes (for 1x1 kernels
    both layouts are the same bytes)."""
    workspace, entry, source = built
    path = workspace.engine_dir / entry.file
    index = read_metadata(path)["weights"]
    state = {f"unet.{n}": p for n, p in source.state_dict().items()}
    spatial = {n for n, p in state.items() if p.dim() == 4 and p.shape[2:] != (1, 1)}
    assert spatial and {e["name"] for e in index if e["nhwc"]} == spatial
    stored = read_weights(path, index, torch.device("cpu"))
    # the attention projections are stored fused (test_fused_projections_...); every other weight as is
    kept = [(e, w) for e, w in zip(index, stored) if e["name"] in state]
    assert {e["name"] for e in index} - {e["name"] for e, _ in kept} == {
        e["name"] for e in index if e["name"].endswith((".qkv", ".kv", ".q"))}
    for e, weight in kept:
        assert weight.dtype == torch.float32 and torch.equal(weight, state[e["name"]])
        if weight.dim() == 4:
            assert weight.is_contiguous(memory_format=torch.channels_last)


def test_weights_are_aligned_for_inductor(built):
    """Inductor copies any input not 16-byte aligned on every call; every stored weight starts on
    a 256-byte boundary, so views of the loaded buffer are aligned."""
    workspace, entry, _ = built
    path = workspace.engine_dir / entry.file
    index = read_metadata(path)["weights"]
    assert all(e["offset"] % 256 == 0 for e in index)
    assert all(w.data_ptr() % 16 == 0 for w in read_weights(path, index, torch.device("cpu")))


def test_load_refuses_foreign_and_damaged_files(built, tmp_path):
    workspace, entry, _ = built
    backend = TorchCompiledBackend()
    good = workspace.engine_dir / entry.file

    def load(path: Path):
        return backend.load(path, "x", TINY, PROFILE, device="cpu")

    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.pt2")
    foreign = tmp_path / "foreign.torch.zip"
    foreign.write_bytes(b"\x00TRT engine bytes" * 100)
    with pytest.raises(EngineFileError, match="not a torch backend engine"):
        load(foreign)
    other_zip = tmp_path / "other.torch.zip"
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("model/data.pkl", b"x")
    with pytest.raises(EngineFileError, match="lacks compiled.bin, engine.json, weights.bin"):
        load(other_zip)
    truncated = tmp_path / "truncated.torch.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(EngineFileError, match="not a zip file, or truncated"):
        load(truncated)
    newer = with_member_changed(good, tmp_path / "newer.torch.zip", RECORD,
                                lambda data: data.replace(FORMAT.encode(), b"sd-unet-torch-inductor/9"))
    with pytest.raises(EngineFileError, match="engine format 'sd-unet-torch-inductor/9'"):
        load(newer)
    damaged = with_member_changed(good, tmp_path / "damaged.torch.zip", ARTIFACT, lambda data: b"garbage")
    with pytest.raises(EngineFileError, match="could not be loaded"):
        load(damaged)
    short_weights = with_member_changed(good, tmp_path / "short-weights.torch.zip", WEIGHTS,
                                        lambda data: data[: len(data) - 1000])
    with pytest.raises(EngineFileError, match="could not be loaded.*truncated"):
        load(short_weights)
    deflated = tmp_path / "deflated.torch.zip"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(deflated, "w") as dst:
        for item in src.infolist():
            dst.writestr(item.filename, src.read(item),
                         zipfile.ZIP_DEFLATED if item.filename == WEIGHTS else zipfile.ZIP_STORED)
    with pytest.raises(EngineFileError, match="weights.bin is compressed"):
        load(deflated)


def test_load_refuses_an_engine_for_another_profile_or_family(built, tmp_path):
    workspace, entry, _ = built
    path = tmp_path / "copy.torch.zip"
    shutil.copy(workspace.engine_dir / entry.file, path)
    backend = TorchCompiledBackend()
    with pytest.raises(EngineFileError, match="not tiny for 128x128"):
        backend.load(path, "x", TINY, Profile.static(1, 128, 128), device="cpu")
    with pytest.raises(EngineFileError, match="not sd1"):
        backend.load(path, "x", FAMILIES["sd1"], PROFILE, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineFileError, match="built for cpu"):
            backend.load(path, "x", TINY, PROFILE, device="cuda")


def test_build_rejects_bad_requests_before_compiling(tmp_path):
    backend = TorchCompiledBackend()
    out = tmp_path / "e.torch.zip"
    unet = seeded_unet(TINY.unet_config())
    with pytest.raises(ValueError, match="no module"):
        backend.build(BuildRequest(tmp_path / "x.onnx", TINY, PROFILE, "fp32", device="cpu"), out)
    with pytest.raises(ValueError, match="unknown precision"):
        backend.build(BuildRequest(tmp_path / "x.onnx", TINY, PROFILE, "int4", module=unet, device="cpu"), out)
    with pytest.raises(ValueError, match="unknown torch backend options: speed .known: inductor, channels_last, attention"):
        backend.build(BuildRequest(tmp_path / "x.onnx", TINY, PROFILE, "fp32", module=unet, device="cpu",
                                   options={"speed": 1}), out)
    with pytest.raises(ValueError, match=r"attention: unknown SDPA kernels \['fastest'\]"):
        backend.build(BuildRequest(tmp_path / "x.onnx", TINY, PROFILE, "fp32", module=unet, device="cpu",
                                   options={"attention": ["cudnn", "fastest"]}), out)
    sizes = Profile(Range(1, 1, 2), Range(64, 64, 128), Range(64, 64, 128), Range(75, 75, 150))
    with pytest.raises(ValueError, match="varies its height, width, tokens"):
        backend.build(BuildRequest(tmp_path / "x.onnx", TINY, sizes, "fp32", module=unet, device="cpu"), out)
    assert not out.exists()


def test_build_never_changes_the_callers_module():
    unet = seeded_unet(TINY.unet_config())
    assert _module_for(unet, torch.device("cpu"), torch.float32) is unet
    copy = _module_for(unet, torch.device("cpu"), torch.bfloat16)
    assert copy is not unet and next(copy.parameters()).dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in unet.parameters())


def test_engine_is_a_torch_compiled_engine(engine):
    assert isinstance(engine, TorchCompiledEngine) and not engine.cuda_graphs
    assert engine.graph_shapes == []


def test_fused_projections_compute_the_same_function_and_leave_the_source_alone():
    """One [q;k;v] GEMM per self-attention, q plus one [k;v] GEMM per cross-attention: the same
    outputs on fresh inputs; the caller's UNet keeps its layers, and weights outside the attention
    projections are shared, not copied."""
    unet = seeded_unet(TINY.unet_config(), seed=5).eval()
    before = {n: p.clone() for n, p in unet.state_dict().items()}
    fused = fused_projections(unet)
    assert sum(isinstance(m, CrossAttention) for m in unet.modules()) == 32
    assert not any(isinstance(m, CrossAttention) for m in fused.modules())
    shared = dict(unet.named_parameters())
    for name, p in fused.named_parameters():
        if name in shared:
            assert p is shared[name]
        else:
            assert name.endswith((".qkv", ".kv", ".q")), name
    for rows, seed in [(2, 41), (1, 42)]:
        x, t, c = _inputs(rows, seed)
        with torch.no_grad():
            assert _rel(fused(x, t, c), unet(x, t, c)) < 1e-6
    assert all(torch.equal(p, before[n]) for n, p in unet.state_dict().items())


def test_attention_kernels_are_recorded_and_can_be_forced():
    """The build records which SDPA kernel each attention call compiles to; the `attention` option
    changes that choice (here on the CPU: flash by default, math when forced)."""
    unet = seeded_unet(TINY.unet_config(), seed=5).eval()
    exported = torch.export.export(UNetCall(unet, False), _inputs(2, 1), strict=False)
    assert sdpa_choices(exported, torch.device("cpu")) == {"flash_attention": 32}
    with sdpa_scope(sdpa_preference(["math"])):
        assert sdpa_choices(exported, torch.device("cpu")) == {"math": 32}
    assert sdpa_choices(exported, torch.device("cpu")) == {"flash_attention": 32}
    assert sdpa_preference(None) is None and sdpa_preference("cudnn") == [sdpa_preference(["cudnn"])[0]]


def test_engine_records_the_attention_kernels(built):
    workspace, entry, _ = built
    record = read_metadata(workspace.engine_dir / entry.file)
    assert record["attention"] == {"flash_attention": 32} and record["fuse_projections"] is True


def test_graph_input_buffers_stay_ordinary_tensors_when_the_first_call_is_in_inference_mode():
    """Seen on the H200: a graph captured under torch.inference_mode kept inference tensors as its
    inputs, and the next call outside that mode could not copy into them (the engine was set aside)."""
    from sd_unet_trt.trt_core.backends.torch_compiled.engine import static_copies

    with torch.inference_mode():
        first = torch.randn(2, 3)
        buffers = static_copies((first,))
    assert first.is_inference() and not buffers[0].is_inference()
    buffers[0].copy_(torch.zeros(2, 3))
    assert torch.equal(buffers[0], torch.zeros(2, 3))
