"""A checkpoint file's UNet, read from the file itself: never from a model in memory, which may hold
a LoRA the WebUI merged into it. Shapes come from the header alone where the format allows it
(safetensors); a `.ckpt` is unpickled with torch's weights-only loader."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from sd_unet_trt.errors import UserError
from sd_unet_trt.models.families import UNET_PREFIX, ModelFamily, UnsupportedModelError, detect_family
from sd_unet_trt.models.unet import UNetModel


class CheckpointError(UserError, ValueError):
    """The file cannot be read as a checkpoint; the message says why in one line."""


@dataclass(frozen=True)
class FileStamp:
    """Size and modification time: a file that still has them was not replaced or rewritten."""
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path | str) -> "FileStamp":
        st = os.stat(path)
        return cls(st.st_size, st.st_mtime_ns)


def _is_unet(key: str) -> bool:
    return key.startswith(UNET_PREFIX)


# how torch's weights-only unpickler names the code a pickle would call (a function or class)
_CODE_NAMED = re.compile(r"GLOBAL ([\w.]+)")


def _refusal(path: Path, error: Exception) -> CheckpointError:
    """The line for a pickle torch would not load. A refusal of its weights-only unpickler must
    not pass on torch's advice (re-run with weights_only=False, or allow the global): with this
    file, that would run whatever code it holds."""
    text = str(error)
    if "Weights only load failed" not in text:
        return CheckpointError(f"{path.name} is not a readable checkpoint ({type(error).__name__}: {text[:200]})")
    code = _CODE_NAMED.search(text)
    if code:
        return CheckpointError(f"{path.name} holds code ({code.group(1)}), not only weights, so it is not loaded: "
                               f"opening it would run that code. Use a .safetensors copy of the model")
    # what the unpickler stopped at, e.g. "Unsupported operand 110": a damaged file, or a pickle of more than tensors
    reason = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation", 1)[0]
    reason = " ".join(reason.split()) if "WeightsUnpickler error:" in text else "pickled objects besides tensors"
    return CheckpointError(f"{path.name} is not a readable checkpoint ({reason}); it is not loaded")


def _load_pickled(path: Path) -> dict[str, torch.Tensor]:
    try:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # an old (non-zip) pickle cannot be memory-mapped
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for damaged or hostile pickles
        raise _refusal(path, e) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path.name} holds a {type(state).__name__}, not a state dict")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def read_unet_tensors(path: Path | str) -> dict[str, torch.Tensor]:
    """The UNet's tensors by their UNet state-dict names, as stored (dtype and values)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                tensors = {k[len(UNET_PREFIX):]: f.get_tensor(k) for k in f.keys() if _is_unet(k)}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path.name} is not a readable safetensors file ({e})") from None
    else:
        tensors = {k[len(UNET_PREFIX):]: v for k, v in _load_pickled(path).items() if _is_unet(k)}
    if not tensors:
        raise CheckpointError(f"{path.name} holds no SD UNet weights (no keys under {UNET_PREFIX!r})")
    return tensors


def unet_shapes(path: Path | str) -> dict[str, torch.Tensor]:
    """The UNet's tensors as meta tensors of the stored shapes: enough to tell the family."""
    path = Path(path)
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k[len(UNET_PREFIX):]: torch.empty(f.get_slice(k).get_shape(), device="meta")
                        for k in f.keys() if _is_unet(k)}
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path.name} is not a readable safetensors file ({e})") from None
    return {k: torch.empty(v.shape, device="meta") for k, v in read_unet_tensors(path).items()}


def family_of_file(path: Path | str, prediction: str = "eps") -> ModelFamily:
    """The checkpoint's model family; UnsupportedModelError names what did not match."""
    shapes = unet_shapes(path)
    if not shapes:
        raise UnsupportedModelError(f"not supported: {Path(path).name} holds no SD UNet weights")
    return detect_family(shapes, prediction)


def unet_from_file(path: Path | str, family: ModelFamily, dtype: torch.dtype | None = None,
                   device: torch.device | str = "cpu") -> UNetModel:
    """Our UNet class holding the file's UNet weights (in `dtype`, on `device`)."""
    tensors = read_unet_tensors(path)
    with torch.device("meta"):
        unet = UNetModel(family.unet_config())
    try:
        unet.load_state_dict({k: v.to(device=device, dtype=dtype or v.dtype) for k, v in tensors.items()},
                             strict=True, assign=True)
    except RuntimeError as e:
        raise CheckpointError(f"{Path(path).name}: its UNet does not match {family.label} ({str(e)[:300]})") from None
    return unet.eval().requires_grad_(False)
