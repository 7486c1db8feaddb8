"""Keeping a router's engines on the weights the host would compute with now.

The host describes its UNet once per sampling pass:
- `base`: every weight's value before any network (LoRA) is applied, with a cheap identity key
  per tensor that changes whenever the tensor may have changed (object and in-place version);
- `merge`: the weights the active networks change, and how (on the engines' device).

Base weights whose fingerprint is not the engines' (another extension changed them in place, a
different file behind the same name) and merged weights are what the engines must take; weights
they took earlier and no longer need are given their original values back. Originals are copied
to the engines' device once and kept, so switching a LoRA on and off again moves no weights
between host and device; where an engine can give its own copy of a weight it was built with (the
torch backend's), that copy is taken, on the device, instead of the host's. Nothing is
recomputed while the description stays the same.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping, Sequence

import torch

from sd_unet_trt.trt_core.weights import WeightsRecord, fingerprint

# (originals of the weights it changes, on the engines' device) -> their new values
MergeFn = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor]]
# names -> the engines' own values for those they can give (Router.build_weights)
BuildWeightsFn = Callable[[Sequence[str]], Mapping[str, torch.Tensor]]


@dataclass
class Merge:
    """What the active networks do to the UNet: the weights they change, and how."""
    names: frozenset[str] = frozenset()
    apply: MergeFn | None = None
    key: Hashable = ()  # equal keys mean the same change (networks, multipliers, mode)


@dataclass
class WeightSync:
    record: WeightsRecord
    device: torch.device
    _keys: dict[str, Hashable] = field(default_factory=dict)  # base tensor identity when fingerprinted
    _differs: set[str] = field(default_factory=set)  # base weights that are not the record's
    _on_device: dict[str, tuple[Hashable, torch.Tensor]] = field(default_factory=dict)  # base values, copied
    _given: set[str] = field(default_factory=set)  # weights the engines hold other values for
    _last: Hashable = None

    def _check_base(self, base: Mapping[str, torch.Tensor], keys: Mapping[str, Hashable]) -> None:
        for name, key in keys.items():
            if self._keys.get(name) != key:
                self._keys[name] = key
                if self.record.fingerprints.get(name) == fingerprint(base[name]):
                    self._differs.discard(name)
                else:
                    self._differs.add(name)

    def _bases_on_device(self, names: set[str], base: Mapping[str, torch.Tensor],
                         build_weights: BuildWeightsFn | None) -> dict[str, torch.Tensor]:
        """Copies (the host may change its tensors in place later), made once per base value: from
        the engines' own where they hold the base value in the host's dtype, else from the host."""
        missing = [n for n in names if self._on_device.get(n, (None,))[0] != self._keys[n]]
        from_engines = {}
        if build_weights is not None and missing:
            unchanged = [n for n in missing if n not in self._differs]
            from_engines = {n: t for n, t in build_weights(unchanged).items() if t.dtype == base[n].dtype}
        for name in missing:
            source = from_engines.get(name, base[name])
            self._on_device[name] = (self._keys[name], source.detach().to(self.device, copy=True))
        return {name: self._on_device[name][1] for name in names}

    def update(self, base: Mapping[str, torch.Tensor], keys: Mapping[str, Hashable], merge: Merge,
               build_weights: BuildWeightsFn | None = None) -> dict[str, torch.Tensor] | None:
        """The weights the engines must take now (their new values, plus originals for weights
        they no longer need changed), or None when that is what they already have."""
        self._check_base(base, keys)
        unknown = sorted(merge.names - keys.keys())
        if unknown:
            raise KeyError(f"the networks change weights the UNet does not have: {', '.join(unknown[:3])}")
        wanted = self._differs | merge.names
        state = (frozenset((name, self._keys[name]) for name in wanted), frozenset(self._given), merge.key)
        if state == self._last:
            return None
        targets = self._bases_on_device(wanted | self._given, base, build_weights)
        if merge.apply is not None and merge.names:
            targets.update(merge.apply({name: targets[name] for name in merge.names}))
        self._given = set(wanted)
        self._last = (state[0], frozenset(wanted), merge.key)
        return targets

    @property
    def at_build(self) -> bool:
        """The weights are the ones the engines were built with (as of the last update)."""
        return not self._given

    @property
    def changed(self) -> set[str]:
        """The base weights that are not the engines' (as of the last update)."""
        return set(self._differs)
