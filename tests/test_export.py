import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from sd_unet_trt.models import unet as arch
from sd_unet_trt.models.families import family_named
from sd_unet_trt.trt_core import export as export_mod
from sd_unet_trt.trt_core.export import DATA_NAME, ONNX_NAME, WEIGHTS_METADATA, ExportError, ExportResult, export_onnx
from sd_unet_trt.trt_core.progress import BuildCancelled, CancelToken
from sd_unet_trt.trt_core.weights import RECORD_NAME, fingerprints

TINY = family_named("tiny")


def run_onnx(path, *args):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: a.numpy() for n, a in zip(names, args)})[0]


def test_exported_graph_has_named_dynamic_axes_and_matches_pytorch(exported):
    unet, path = exported("tiny")
    model = onnx.load(str(path))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims == {"x": ["rows", 4, "latent_height", "latent_width"], "timesteps": ["rows"],
                    "context": ["rows", "context_len", 768]}
    assert [o.name for o in model.graph.output] == ["out"]
    g = torch.Generator().manual_seed(5)  # shapes unlike the 2x8x8 the export traced with
    for rows, h, w, ctx in [(1, 9, 8, 77), (3, 13, 11, 154), (5, 16, 16, 231)]:
        args = (torch.randn(rows, 4, h, w, generator=g), torch.rand(rows, generator=g) * 999,
                torch.randn(rows, ctx, 768, generator=g))
        with torch.no_grad():
            expected = unet(*args).numpy()
        out = run_onnx(path, *args)
        assert np.linalg.norm(out - expected) / np.linalg.norm(expected) < 1e-5


def test_sdxl_shaped_export_takes_y(exported):
    unet, path = exported("tiny-xl")
    names = [i.name for i in onnx.load(str(path)).graph.input]
    assert names == ["x", "timesteps", "context", "y"]
    args = (torch.randn(2, 4, 8, 8), torch.tensor([3.0, 700.0]), torch.randn(2, 77, 2048), torch.randn(2, 2816))
    with torch.no_grad():
        expected = unet(*args).numpy()
    assert np.abs(run_onnx(path, *args) - expected).max() < 1e-4


def test_fp16_weights_and_the_source_is_left_as_it_was(tmp_path):
    unet = arch.seeded_unet(arch.TINY)
    before = {k: (v.data_ptr(), v.dtype, v.device, v.requires_grad) for k, v in unet.named_parameters()}
    training, grad_mode = unet.training, torch.is_grad_enabled()
    path = export_onnx(unet, TINY, tmp_path / "fp16", weights="fp16").onnx_path
    assert {k: (v.data_ptr(), v.dtype, v.device, v.requires_grad) for k, v in unet.named_parameters()} == before
    assert unet.training == training and torch.is_grad_enabled() == grad_mode
    model = onnx.load(str(path))
    conv_weight = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    assert conv_weight is not None
    x_type = next(i for i in model.graph.input if i.name == "x").type.tensor_type.elem_type
    t_type = next(i for i in model.graph.input if i.name == "timesteps").type.tensor_type.elem_type
    assert (x_type, t_type) == (onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT)


def test_large_models_go_to_one_external_data_file(tmp_path, monkeypatch):
    monkeypatch.setattr(export_mod, "PROTOBUF_LIMIT", 1024**2 * 64 + 1)  # treat the tiny model as "over 2 GB"
    unet = arch.seeded_unet(arch.TINY)
    path = export_onnx(unet, TINY, tmp_path / "big", weights="fp32").onnx_path
    assert sorted(p.name for p in path.parent.iterdir()) == [ONNX_NAME, DATA_NAME, RECORD_NAME]
    assert path.stat().st_size < 2 * 1024**2 < (path.parent / DATA_NAME).stat().st_size
    args = (torch.randn(1, 4, 8, 8), torch.tensor([10.0]), torch.randn(1, 77, 768))
    with torch.no_grad():
        assert np.abs(run_onnx(path, *args) - unet(*args).numpy()).max() < 1e-4


def test_cancel_or_failure_leaves_no_folder(tmp_path):
    unet = arch.seeded_unet(arch.TINY)
    token = CancelToken()

    def cancel_while_cleaning(phase, fraction):
        if phase.startswith("export: cleaning"):
            token.cancel()
    with pytest.raises(BuildCancelled):
        export_onnx(unet, TINY, tmp_path / "out", progress=cancel_while_cleaning, cancel=token)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ExportError, match="not SD 1.x|not tiny|are tiny"):
        export_onnx(unet, family_named("sd1"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_meta_weights_are_refused(tmp_path):
    with torch.device("meta"):
        unet = arch.UNetModel(arch.TINY)
    with pytest.raises(ExportError, match="not loaded"):
        export_onnx(unet, TINY, tmp_path / "out")


def test_every_weight_keeps_its_state_dict_name_and_is_recorded(exported):
    """Each UNet weight is an initializer of its own under its state-dict name (never folded into an
    anonymous constant, never shared through the exporter's Identity nodes), and the metadata and
    the weights record list exactly those."""
    unet, path = exported("tiny")
    model = onnx.load(str(path))
    state = unet.state_dict()
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    assert set(state) <= set(initializers)
    for name, tensor in state.items():
        assert np.array_equal(initializers[name], tensor.numpy()), name
    identities = [n for n in model.graph.node if n.op_type == "Identity" and n.output[0] in state]
    assert not identities
    meta = json.loads(next(p.value for p in model.metadata_props if p.key == WEIGHTS_METADATA))
    assert meta["shapes"] == {name: list(t.shape) for name, t in state.items()}
    result = ExportResult.read(path.parent, TINY, "fp32")
    assert result.record.fingerprints == meta["fingerprints"] == fingerprints(state)


def test_weights_the_exporter_would_merge_stay_separate(tmp_path):
    """Two norm layers with identical values (a fresh model's ones and zeros) each keep an initializer."""
    unet = arch.UNetModel(arch.TINY).eval()  # default init: every GroupNorm weight is 1, every bias 0
    path = export_onnx(unet, TINY, tmp_path / "plain", weights="fp32").onnx_path
    names = {t.name for t in onnx.load(str(path)).graph.initializer}
    assert set(unet.state_dict()) <= names
