"""Attention in the compiled graph: q/k/v projections fused into wider GEMMs, and the SDPA kernel
the compile is allowed to pick (recorded per attention call)."""
from __future__ import annotations

import contextlib
import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from sd_unet_trt.models.unet import CrossAttention

# SDPA kernels by the names the `attention` build option takes
SDPA_KERNELS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}


class FusedProjectionAttention(torch.nn.Module):
    """A CrossAttention whose q/k/v projections run as one GEMM (self-attention) or q plus one k/v
    GEMM (cross-attention): the same function, fewer and wider matrix products. Built once from a
    CrossAttention; shares its output projection. `sources` names, per concatenated weight, the
    projection weights it is made of, in row order (what a refit writes where)."""

    def __init__(self, attn: CrossAttention):
        super().__init__()
        self.heads, self.inner = attn.heads, attn.to_q.out_features
        weights = (attn.to_q.weight, attn.to_k.weight, attn.to_v.weight)
        if any(layer.bias is not None for layer in (attn.to_q, attn.to_k, attn.to_v)):
            raise ValueError("fuse_projections expects q/k/v projections without bias (as in the SD UNets)")
        self.same_input = attn.to_q.in_features == attn.to_k.in_features
        with torch.no_grad():
            if self.same_input:  # one [q; k; v] weight serves both self- and cross-attention
                self.qkv = torch.nn.Parameter(torch.cat(weights), requires_grad=False)
                self.sources = {"qkv": weights}
            else:
                self.q = attn.to_q.weight
                self.kv = torch.nn.Parameter(torch.cat(weights[1:]), requires_grad=False)
                self.sources = {"kv": weights[1:]}
        self.to_out = attn.to_out

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is None:
            q, k, v = F.linear(x, self.qkv).chunk(3, dim=-1)
        elif self.same_input:
            q = F.linear(x, self.qkv[:self.inner])
            k, v = F.linear(context, self.qkv[self.inner:]).chunk(2, dim=-1)
        else:
            q = F.linear(x, self.q)
            k, v = F.linear(context, self.kv).chunk(2, dim=-1)
        b = x.shape[0]
        q, k, v = (t.reshape(b, -1, self.heads, t.shape[-1] // self.heads).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, -1, q.shape[1] * q.shape[-1]))


def fused_projections(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with every CrossAttention replaced by a FusedProjectionAttention. The caller's
    module is untouched: containers on the way to an attention are shallow copies, every other
    layer (and its weights) is shared, so only the concatenated q/k/v weights take new memory."""
    if isinstance(module, CrossAttention):
        # quantized projections (quantized.py) stay as they are
        plain = all(type(layer) is torch.nn.Linear for layer in (module.to_q, module.to_k, module.to_v))
        return FusedProjectionAttention(module) if plain else module
    children = {name: fused_projections(child) for name, child in module.named_children()}
    if all(children[name] is child for name, child in module.named_children()):
        return module
    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    for name, child in children.items():
        clone._modules[name] = child
    return clone


def weight_sources(module: torch.nn.Module, unet: torch.nn.Module) -> dict[str, list[tuple[str, int]]]:
    """For each parameter of `module` (by its name there), the weights of `unet` (by their state-dict
    names) it holds and the row each starts at: itself, the projections a fused attention
    concatenated, or the float weight a quantized layer was made from."""
    names = {id(p): name for name, p in unet.named_parameters()}
    out = {name: [(names[id(p)], 0)] for name, p in module.named_parameters(remove_duplicate=False) if id(p) in names}
    for path, child in module.named_modules(remove_duplicate=False):
        if hasattr(child, "weight_format") and id(child.source) in names:  # a quantized layer
            out[f"{path}.weight"] = [(names[id(child.source)], 0)]
        if isinstance(child, FusedProjectionAttention):
            for attr, parts in child.sources.items():
                starts = [0]
                for part in parts[:-1]:
                    starts.append(starts[-1] + part.shape[0])
                out[f"{path}.{attr}"] = [(names[id(part)], start) for part, start in zip(parts, starts)]
    return out


def sdpa_preference(option: Any) -> list[SDPBackend] | None:
    """The `attention` build option: None (torch's choice) or kernel names in priority order."""
    if option is None:
        return None
    names = [option] if isinstance(option, str) else list(option)
    unknown = [n for n in names if n not in SDPA_KERNELS]
    if not names or unknown:
        raise ValueError(f"attention: unknown SDPA kernels {unknown or names} (known: {', '.join(SDPA_KERNELS)})")
    return [SDPA_KERNELS[n] for n in names]


def sdpa_scope(preference: list[SDPBackend] | None) -> Any:
    """Where the compile picks the SDPA kernel: aten.scaled_dot_product_attention stays generic in
    the exported graph and is decomposed into one kernel's op when Inductor traces it, under the
    flags this context sets."""
    if preference is None:
        return contextlib.nullcontext()
    return sdpa_kernel(preference, set_priority=True)


def sdpa_choices(exported: Any, device: torch.device) -> dict[str, int]:
    """How many attention calls of the exported graph go to each SDPA kernel under the current
    flags: torch's own dispatch, asked on empty tensors of each call's shapes and strides."""
    names = {b.value: name.lower() for name, b in SDPBackend.__members__.items()}
    counts: dict[str, int] = {}
    for node in exported.graph.nodes:
        if node.op == "call_function" and node.target is torch.ops.aten.scaled_dot_product_attention.default:
            q, k, v = (torch.empty_strided(a.meta["val"].shape, a.meta["val"].stride(), dtype=a.meta["val"].dtype,
                                           device=device) for a in node.args[:3])
            choice = names.get(int(torch._fused_sdp_choice(q, k, v)), "unknown")
            counts[choice] = counts.get(choice, 0) + 1
    return counts
