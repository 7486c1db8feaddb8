"""The engine file: one zip holding the compiled artifact, the weights as one raw blob (stored
uncompressed, each weight 256-byte aligned, 4-d weights as NHWC bytes) and a record of what was
built, including which UNet weights (state-dict names) each stored weight holds."""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import Any

import torch

from sd_unet_trt.trt_core.atomic import ForeignJson, UnreadableJson, read_tagged_json
from sd_unet_trt.trt_core.backends.base import EngineFileError

FORMAT = "sd-unet-torch-inductor/3"  # /3: each stored weight names the UNet weights it holds (refit)
RECORD, ARTIFACT, WEIGHTS = "engine.json", "compiled.bin", "weights.bin"
# dtypes a stored weight may have (the UNet's parameters and buffers), by name in the record
WEIGHT_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float32, torch.float16, torch.bfloat16,
                                                             torch.float64, torch.int64, torch.int32, torch.bool,
                                                             torch.int8, torch.float8_e4m3fn)}
ALIGN = 256  # bytes; Inductor copies inputs that are not 16-byte aligned on every call
READ_CHUNK = 64 << 20  # bytes per read from the engine file into pinned memory


def read_metadata(path: Path) -> dict[str, Any]:
    """The engine's record, read without loading any code or weights."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"engine file {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if not {RECORD, ARTIFACT, WEIGHTS} <= names:
                raise EngineFileError(f"{path} is a zip file but not a torch backend engine "
                                      f"(it lacks {', '.join(sorted({RECORD, ARTIFACT, WEIGHTS} - names))})")
            return read_tagged_json(archive.read(RECORD), "format", FORMAT)
    except zipfile.BadZipFile:
        raise EngineFileError(f"{path} is not a torch backend engine (not a zip file, or truncated)") from None
    except (KeyError, UnreadableJson) as e:
        raise EngineFileError(f"{path} has a damaged engine record: {e}") from None
    except ForeignJson as e:
        raise EngineFileError(f"{path} has engine format {e.found!r}; this extension reads {FORMAT!r}") from None


def channels_last_layout(weight: torch.Tensor) -> torch.Tensor:
    """NHWC layout built the way `read_weights` rebuilds it (a contiguous NHWC tensor, viewed as
    NCHW), so the compiled graph's stride checks see the same strides at build and at load."""
    return weight.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)


def weights_for_compile(weights: list[torch.Tensor], channels_last: bool) -> list[torch.Tensor]:
    if not channels_last:
        return [w.contiguous() for w in weights]
    return [channels_last_layout(w) if w.dim() == 4 else w.contiguous() for w in weights]


def write_weights(f: Any, names: list[str], weights: list[torch.Tensor],
                  sources: dict[str, list[tuple[str, int]]],
                  quantized: dict[str, dict[str, str]] | None = None) -> list[dict[str, Any]]:
    """Writes the weights back to back, each at a multiple of ALIGN bytes; 4-d channels-last weights
    as their NHWC bytes. Returns the index the record keeps (graph order), with the UNet weights
    (state-dict name, first row) each stored weight is made of, and for a quantized weight its
    format and the name of its scales."""
    quantized = quantized or {}
    index, offset = [], 0
    for name, w in zip(names, weights):
        w = w.detach().to("cpu")
        nhwc = w.dim() == 4 and not w.is_contiguous()
        data = (w.permute(0, 2, 3, 1) if nhwc else w).contiguous()
        pad = -offset % ALIGN
        f.write(bytes(pad))
        offset += pad
        raw = data.reshape(-1).view(torch.uint8)
        f.write(memoryview(raw.numpy()))
        index.append({"name": name, "dtype": str(w.dtype).removeprefix("torch."), "shape": list(data.shape),
                      "offset": offset, "nhwc": nhwc, "sources": [list(source) for source in sources.get(name, [])]})
        if name in quantized:
            index[-1]["quantized"] = quantized[name]
        offset += raw.numel()
    return index


def _member_data_offset(f: Any, info: zipfile.ZipInfo) -> int:
    """Where a stored (uncompressed) zip member's bytes start in the zip file."""
    if info.compress_type != zipfile.ZIP_STORED:
        raise EngineFileError(f"{info.filename} is compressed; the engine stores it uncompressed")
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise EngineFileError(f"damaged zip entry for {info.filename}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _read_into(f: Any, view: memoryview) -> None:
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise EngineFileError("the engine file ends inside its weights (truncated)")
        done += n


def _read_blob(f: Any, size: int, device: torch.device) -> torch.Tensor:
    """`size` bytes from the file's position into one uint8 tensor on `device`. On CUDA through two
    pinned buffers, so reading the next chunk overlaps copying the last one to the GPU."""
    blob = torch.empty(size, dtype=torch.uint8, device=device)
    if device.type != "cuda":
        _read_into(f, memoryview(blob.numpy()))
        return blob
    staging = [torch.empty(min(READ_CHUNK, size), dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    copied: list[torch.cuda.Event | None] = [None, None]
    stream = torch.cuda.current_stream(device)
    for i, start in enumerate(range(0, size, READ_CHUNK)):
        n = min(READ_CHUNK, size - start)
        buf, done = staging[i % 2], copied[i % 2]
        if done is not None:
            done.synchronize()  # the copy out of this buffer has finished
        _read_into(f, memoryview(buf.numpy())[:n])
        blob[start:start + n].copy_(buf[:n], non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
        copied[i % 2] = event
    stream.synchronize()
    return blob


def read_weights(path: Path, index: list[dict[str, Any]], device: torch.device) -> list[torch.Tensor]:
    """The engine's weights in graph order, read straight from the zip onto `device` as views of one
    buffer (so each keeps the alignment of its offset)."""
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(WEIGHTS)
    dtypes = [WEIGHT_DTYPES[entry["dtype"]] for entry in index]
    sizes = [torch.Size(entry["shape"]).numel() * dtype.itemsize for entry, dtype in zip(index, dtypes)]
    if max((entry["offset"] + size for entry, size in zip(index, sizes)), default=0) > info.file_size:
        raise EngineFileError("the engine file ends inside its weights (truncated)")
    with open(path, "rb") as f:
        f.seek(_member_data_offset(f, info))
        blob = _read_blob(f, info.file_size, device)
    weights = []
    for entry, dtype, size in zip(index, dtypes, sizes):
        tensor = blob[entry["offset"]:entry["offset"] + size].view(dtype).view(entry["shape"])
        weights.append(tensor.permute(0, 3, 1, 2) if entry["nhwc"] else tensor)
    return weights


