"""Fixtures' building blocks: a WebUI-double session with the extension loaded like the WebUI
loads it, tiny checkpoints, and engine folders whose manifest lists ONNX Runtime engines."""
from __future__ import annotations

import importlib.util
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from tests.webui_double import ROOT, install

install()

from sd_unet_trt.models.families import family_named  # noqa: E402
from modules import (devices, errors, hashes, lowvram, paths_internal, processing, script_callbacks, scripts,  # noqa: E402
                     sd_hijack, sd_models, sd_unet, shared)
from sd_unet_trt.trt_core.backends.base import BuildRequest  # noqa: E402
from sd_unet_trt.trt_core.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from sd_unet_trt.trt_core.export import ExportResult  # noqa: E402
from sd_unet_trt.trt_core.file_digest import file_sha256
from sd_unet_trt.trt_core.manifest import CheckpointId, EngineEntry, engine_id  # noqa: E402
from sd_unet_trt.trt_core.profiles import Profile  # noqa: E402
from sd_unet_trt.trt_core.workspace import Workspace  # noqa: E402

SCRIPT = ROOT / "scripts" / "trt_unet.py"


def load_extension():
    """scripts/trt_unet.py executed as script_loading.load_module does (spec from file location)."""
    script_callbacks.clear_callbacks()
    spec = importlib.util.spec_from_file_location(SCRIPT.name, SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    runner = scripts.ScriptRunner()
    for cls in [v for v in vars(module).values()
                if isinstance(v, type) and issubclass(v, scripts.Script) and v is not scripts.Script]:
        script = cls()  # as ScriptRunner.initialize_scripts does for txt2img
        script.filename, script.is_txt2img, script.is_img2img = str(SCRIPT), True, False
        if script.show(script.is_img2img) == scripts.AlwaysVisible:
            runner.scripts.append(script)
            runner.alwayson_scripts.append(script)
            script.alwayson = True
    return module, runner


def webui_unet(source: torch.nn.Module, sgm: bool = False) -> torch.nn.Module:
    """The WebUI's (patched) ldm/sgm UNetModel class holding the weights of `source` (one of
    models.unet's UNets, e.g. the one an engine was exported from)."""
    cls = sd_hijack.SgmUNetModel if sgm else sd_hijack.LdmUNetModel
    unet = cls(source.config)
    unet.load_state_dict(source.state_dict())
    return unet.eval().requires_grad_(False)


def checkpoint(name: str, sha256: str) -> sd_models.CheckpointInfo:
    filename = f"/models/Stable-diffusion/{name}.safetensors"
    hashes.file_sha256[filename] = sha256
    info = sd_models.CheckpointInfo(filename)
    info.register()
    return info


def checkpoint_file(models_path: Path, name: str, unet: torch.nn.Module) -> sd_models.CheckpointInfo:
    """A real checkpoint file of `unet`'s weights (under the WebUI's keys), registered like the
    WebUI lists one; builds read their UNet from it."""
    from safetensors.torch import save_file

    path = models_path / "Stable-diffusion" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"model.diffusion_model.{k}": v.contiguous() for k, v in unet.state_dict().items()}, str(path))
    hashes.file_sha256[str(path)] = file_sha256(path)
    info = sd_models.CheckpointInfo(str(path))
    info.register()
    return info


def install_lora(folder: Path, loras: dict[str, dict[str, torch.Tensor]]):
    """The built-in Lora extension loaded, with these LoRA files on disk (name -> tensors)."""
    import network
    import networks
    from safetensors.torch import save_file

    networks.install()
    folder.mkdir(parents=True, exist_ok=True)
    for name, tensors in loras.items():
        save_file(tensors, str(folder / f"{name}.safetensors"))
        networks.available_networks[name] = network.NetworkOnDisk(name, str(folder / f"{name}.safetensors"))
    return networks


def load(unet, info, sgm: bool = False, **fields) -> processing.SdModel:
    model = processing.SdModel(unet, info, sgm=sgm)
    for key, value in fields.items():
        setattr(model, key, value)
    return sd_models.activate_model(model)


def reset_options() -> None:
    """What one generation may change for the next: options, flags, the error log."""
    errors.reported.clear()
    processing.ORDER.clear()
    shared.opts.data["sd_unet"] = "Automatic"
    shared.opts.data["pad_cond_uncond"] = False
    shared.opts.data["batch_cond_uncond"] = True
    shared.cmd_opts.medvram = shared.cmd_opts.lowvram = False
    shared.state.interrupted = False


def reset(models_path: Path) -> None:
    """A WebUI just started: no checkpoint, no UNet options, models folder `models_path`."""
    reset_options()
    paths_internal.models_path = str(models_path)
    sd_models.checkpoints_list.clear()
    sd_models.checkpoint_aliases.clear()
    sd_models.model_data.sd_model = None
    sd_models.model_data.loaded_sd_models.clear()
    shared.opts.data["sd_model_checkpoint"] = None
    shared.sd_model = None
    lowvram.module_in_gpu = None
    sd_unet.unet_options.clear()
    sd_unet.current_unet_option = None
    sd_unet.current_unet = None
    devices.device = torch.device("cpu")


def start(models_path: Path, unet: torch.nn.Module, info_name: str, sha256: str, sgm: bool = False):
    """The WebUI's start-up order: scripts loaded, settings registered, UNets listed, then the
    checkpoint loaded. Returns (script runner, loaded model)."""
    reset(models_path)
    _, runner = load_extension()
    script_callbacks.ui_settings_callback()
    info = checkpoint(info_name, sha256)
    sd_unet.list_unets()
    return runner, load(unet, info, sgm=sgm)


def stop() -> None:
    script_callbacks.script_unloaded_callback()


def register_ort_engines(workspace: Workspace, onnx_path: Path, family_name: str, checkpoint_id: CheckpointId,
                         profiles: list[Profile]) -> list[EngineEntry]:
    """Manifest entries for ONNX Runtime engines of an exported ONNX, one per profile, written as
    the pipeline writes them but without its accuracy checks (tests/test_pipeline.py covers those).
    ONNX Runtime's engine file does not depend on the profile, so it is built once and copied."""
    backend, family = OnnxRuntimeBackend(), family_named(family_name)
    record = ExportResult.read(onnx_path.parent, family, "fp32").record
    checkpoint_id = replace(checkpoint_id, weights=record.digest)
    record.save(workspace.weights_record_path(record.digest))
    manifest = workspace.manifest()
    manifest.dir.mkdir(parents=True, exist_ok=True)
    built = workspace.root / f"{family_name}.building{backend.file_suffix}"
    outcome = backend.build(BuildRequest(onnx_path, family, profiles[0], "fp32", device="cpu"), built)
    entries = []
    for profile in profiles:
        entry_id = engine_id(checkpoint_id, family.name, backend.name, outcome.precision, profile)
        file_name = entry_id + backend.file_suffix
        shutil.copyfile(built, manifest.dir / file_name)
        entry = EngineEntry(id=entry_id, checkpoint=checkpoint_id, family=family.name, backend=backend.name,
                            backend_version=backend.version(), gpu_arch=backend.device_arch("cpu"), profile=profile,
                            precision=outcome.precision, file=file_name,
                            file_size=(manifest.dir / file_name).stat().st_size,
                            file_sha256=file_sha256(manifest.dir / file_name))
        manifest.add(entry)
        entries.append(entry)
    built.unlink()
    return entries
