"""A random LoRA for a tiny test UNet, in the kohya format the WebUI's built-in Lora reads:
`lora_unet_<ldm layer path, "." -> "_">.lora_down.weight / .lora_up.weight / .alpha` for every
spatial-transformer layer (attention q/k/v/out, feed-forward, proj_in/out; 1x1 convs as 4-d).

    python tests/real_webui/tiny_lora.py CHECKPOINT.safetensors OUT.safetensors [SEED] [SCALE]

The WebUI test double's Lora and the real one read the same files."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

RANK = 4
UNET_PREFIX = "model.diffusion_model."
LAYER = re.compile(r"^(input_blocks|middle_block|output_blocks)\.[\d.]+\."
                   r"(proj_in|proj_out|transformer_blocks\.\d+\.(attn[12]\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2)))$")


def lora_tensors(shapes: dict[str, tuple[int, ...]], seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """From the UNet's weight shapes (state-dict names without the checkpoint prefix)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in sorted(shapes.items()):
        layer = key.removesuffix(".weight")
        if not key.endswith(".weight") or not LAYER.match(layer) or len(shape) not in (2, 4):
            continue
        out_dim, in_dim, kernel = shape[0], shape[1], tuple(shape[2:])
        name = "lora_unet_" + layer.replace(".", "_")
        out[name + ".lora_down.weight"] = torch.randn((RANK, in_dim, *kernel), generator=g) / in_dim ** 0.5
        out[name + ".lora_up.weight"] = torch.randn((out_dim, RANK, *[1] * len(kernel)), generator=g) * scale / RANK ** 0.5
        out[name + ".alpha"] = torch.tensor(float(RANK))
    return out


def main(argv: list[str]) -> int:
    from safetensors import safe_open
    from safetensors.torch import save_file

    if len(argv) < 3:
        print(__doc__.splitlines()[4].strip(), file=sys.stderr)
        return 2
    with safe_open(argv[1], framework="pt") as f:
        shapes = {k[len(UNET_PREFIX):]: tuple(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith(UNET_PREFIX)}
    tensors = lora_tensors(shapes, int(argv[3]) if len(argv) > 3 else 0, float(argv[4]) if len(argv) > 4 else 1.0)
    save_file(tensors, argv[2])
    print(f"wrote {Path(argv[2]).name}: {len(tensors) // 3} layers, rank {RANK}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
