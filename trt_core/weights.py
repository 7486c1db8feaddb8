"""What weights an engine holds, told apart cheaply from what a host's UNet holds now.

An export records one fingerprint per UNet tensor (its state-dict name). A fingerprint is an
exact integer checksum of the tensor's values rounded to fp16, over a fixed sample of at most
SAMPLE elements: the same on CPU and GPU, for an fp16 or fp32 copy of the same weights, and
different for any change a LoRA, a merge or fp8 storage makes (they change every element of the
tensors they touch; what fp16 cannot represent, an fp16 engine cannot hold either).

The record's digest goes into the engine's identity in the manifest: it says exactly which
weights were exported, whatever the checkpoint file holds.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from sd_unet_trt.trt_core.atomic import ForeignJson, UnreadableJson, atomic_write_text, read_tagged_json

FORMAT = "sd-unet-weights/1"
RECORD_NAME = "unet.weights.json"
SAMPLE = 1 << 16
_PRIME = 65521  # the sample's weights are 1..65521: with fp16 bit patterns (< 2^16) every product and
# every sum of SAMPLE of them stays below 2^53, so the checksum is exact in int64 on any device


def fingerprint(tensor: torch.Tensor) -> int:
    flat = tensor.detach().reshape(-1)
    if flat.numel() > SAMPLE:
        flat = flat[::-(-flat.numel() // SAMPLE)]
    bits = flat.to(torch.float16).view(torch.int16).to(torch.int64)
    weights = torch.arange(1, bits.numel() + 1, device=bits.device, dtype=torch.int64) * 40503 % _PRIME + 1
    return int((bits * weights).sum()) ^ (tensor.numel() << 1)


def fingerprints(tensors: Mapping[str, torch.Tensor]) -> dict[str, int]:
    return {name: fingerprint(t) for name, t in tensors.items()}


def digest(prints: Mapping[str, int]) -> str:
    text = json.dumps(sorted(prints.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class WeightsRecord:
    """The UNet tensors an export was made from: their fingerprints, and where they came from."""
    fingerprints: dict[str, int]
    source: str  # "checkpoint file <name>" or "module in memory"
    checkpoint_sha256: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def digest(self) -> str:
        return digest(self.fingerprints)

    @classmethod
    def of(cls, tensors: Mapping[str, torch.Tensor], source: str, checkpoint_sha256: str, **details) -> "WeightsRecord":
        return cls(fingerprints(tensors), source, checkpoint_sha256, dict(details))

    def save(self, path: Path) -> None:
        atomic_write_text(Path(path), json.dumps({"format": FORMAT, "source": self.source,
                                                  "checkpoint_sha256": self.checkpoint_sha256,
                                                  "details": self.details, "digest": self.digest,
                                                  "fingerprints": self.fingerprints}, indent=0))

    @classmethod
    def load(cls, path: Path) -> "WeightsRecord":
        """The record at `path`; ValueError with the reason for a missing, foreign or damaged one."""
        try:
            data = read_tagged_json(Path(path), "format", FORMAT)
        except FileNotFoundError:
            raise ValueError(f"{path} does not exist") from None
        except (OSError, UnreadableJson) as e:
            raise ValueError(f"{path} is unreadable: {e}") from None
        except ForeignJson:
            raise ValueError(f"{path} is not a weights record of this extension ({FORMAT})") from None
        prints = data.get("fingerprints")
        if not isinstance(prints, dict) or not all(isinstance(v, int) for v in prints.values()):
            raise ValueError(f"{path} has no valid fingerprints")
        record = cls(prints, str(data.get("source", "")), str(data.get("checkpoint_sha256", "")),
                     dict(data.get("details") or {}))
        if data.get("digest") != record.digest:
            raise ValueError(f"{path} is damaged (its digest does not match its fingerprints)")
        return record

    def differing(self, tensors: Mapping[str, torch.Tensor]) -> list[str]:
        """Names among `tensors` whose values are not the recorded ones (unknown names included)."""
        return [name for name, t in tensors.items() if self.fingerprints.get(name) != fingerprint(t)]
