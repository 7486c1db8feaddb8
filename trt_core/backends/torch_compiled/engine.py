"""A loaded torch backend engine: pads calls to the compiled rows, replays one CUDA graph per call
shape, and takes changed UNet weights in place (they are graph inputs, views of one device blob)."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Mapping

import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.backends.base import Engine, WeightsUnsupported, control_inputs
from sd_unet_trt.trt_core.backends.torch_compiled.quantized import requantize
from sd_unet_trt.trt_core.profiles import CallShape, Profile

MAX_GRAPHS = 16  # CUDA graphs kept per engine (one per exact call shape), least recently used dropped


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    output: list[torch.Tensor]  # the family's outputs (one for a UNet)


def static_copies(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A graph's input buffers: ordinary tensors even when the first call came under
    torch.inference_mode (its clones would be inference tensors, which later calls outside that
    mode may not copy into)."""
    with torch.inference_mode(False):
        return tuple(t.clone() for t in inputs)


class TorchCompiledEngine(Engine):
    """Runs calls inside its profile. The compiled graph takes the profile's most rows: a call with
    fewer is padded (by repeating its last row) and the padding cut off the output; rows are
    independent in the UNet, so the real rows are unaffected. On CUDA the graph is captured once
    and replayed. Outputs are contiguous in the caller's dtype and device.

    `weights` are the compiled graph's weight inputs and `sources` says, per weight, which UNet
    weights (state-dict name, first row) it holds: `set_weights` writes new values into them in
    place, so the next run and every captured CUDA graph see them. `quantized` maps a stored weight
    that is INT8 or FP8 to its format and its scales' position: new values are quantized into both
    (per row, or per tensor for the static FP8 recipe: weight scales need no calibration; a static
    recipe's input scales stay as calibrated)."""

    def __init__(self, name: str, family: ModelFamily, profile: Profile, runner: Any, device: torch.device,
                 dtype: torch.dtype, cuda_graphs: bool, weights_bytes: int = 0,
                 weights: list[torch.Tensor] | None = None, sources: list[list[list]] | None = None,
                 quantized: Mapping[int, tuple[str, int]] | None = None, names: list[str] | None = None):
        self.name, self.family, self.profile = name, family, profile
        self.device, self.dtype, self.cuda_graphs = device, dtype, cuda_graphs
        self._runner = runner
        self._weights_bytes = weights_bytes
        self._weights = weights or []
        self._quantized = dict(quantized or {})
        self._names = list(names or [])
        # UNet weight -> where it is: (graph weight, first row, rows); several parts of one graph
        # weight are the projections a fused attention concatenated
        self._targets: dict[str, list[tuple[int, int, int]]] = {}
        for index, held in enumerate(sources or []):
            if not held:  # e.g. a quantized layer's scales: no UNet weight of their own (0-d for static FP8)
                continue
            rows = [int(row) for _, row in held] + [self._weights[index].shape[0] if self._weights else 0]
            for (unet_name, _), start, end in zip(held, rows, rows[1:]):
                self._targets.setdefault(unet_name, []).append((index, start, end - start))
        self._graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self._pool = torch.cuda.graph_pool_handle() if cuda_graphs else None
        # Calls, weight writes and close take turns: a call fills a graph's static inputs and reads
        # its one output buffer; a weight write mid-run would mix old and new weights.
        self._lock = threading.Lock()

    @property
    def memory_bytes(self) -> int:
        return self._weights_bytes

    @property
    def graph_shapes(self) -> list[tuple]:
        return list(self._graphs)

    def _inputs(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None, control: list[torch.Tensor] | None) -> tuple[torch.Tensor, ...]:
        residuals = control_inputs(self.family, x, control, self.name)
        call = CallShape.of(x, context, y)
        coverage = self.profile.covers(call, self.family)
        if not coverage or coverage.needs_split:
            reason = coverage.reason or f"{call.rows} rows is above the engine's maximum of {self.profile.rows.max}"
            raise ValueError(f"engine {self.name} cannot run {call.describe()}: {reason}")
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape [{x.shape[0]}], got {list(timesteps.shape)}")
        inputs = [x.to(self.device, self.dtype), timesteps.to(self.device, torch.float32), context.to(self.device, self.dtype)]
        if self.family.y_dim:
            inputs.append(y.to(self.device, self.dtype))
        inputs += [c.to(self.device, self.dtype) for c in residuals]
        pad = self.profile.rows.max - x.shape[0]
        if pad:
            inputs = [torch.cat([t, t[-1:].expand(pad, *t.shape[1:])]) for t in inputs]
        return tuple(t.contiguous() for t in inputs)

    def set_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        if not self._targets:
            raise WeightsUnsupported(f"engine {self.name} was built without a record of its weights' names; rebuild it")
        writes = []
        for name, value in weights.items():
            if name not in self._targets:
                raise WeightsUnsupported(f"engine {self.name} has no weight {name}")
            for index, row, rows in self._targets[name]:
                part = self._weights[index][row:row + rows] if value.dim() else self._weights[index]
                if part.shape != value.shape:
                    raise WeightsUnsupported(f"engine {self.name}: {name} is {list(part.shape)}, "
                                             f"the new value is {list(value.shape)}")
                if index in self._quantized:
                    weight_format, scale_index = self._quantized[index]
                    values, scales = requantize(value.to(part.device), weight_format)
                    scale = self._weights[scale_index]
                    writes += [(part, values), (scale[row:row + rows] if scale.dim() else scale, scales)]
                else:
                    writes.append((part, value))
        with self._lock, torch.no_grad():
            for part, value in writes:
                part.copy_(value)

    def stored_weights(self) -> dict[str, torch.Tensor]:
        """The compiled graph's weight inputs by their graph names (views: what every call reads)."""
        return dict(zip(self._names, self._weights))

    def weights_of(self, names: list[str]) -> dict[str, torch.Tensor]:
        out = {}
        for name in names:
            if name in self._targets and self._weights:
                index, row, rows = self._targets[name][0]
                if index not in self._quantized:  # a quantized copy is not the value it was built with
                    out[name] = self._weights[index][row:row + rows]
        return out

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                 y: torch.Tensor | None = None, control: list[torch.Tensor] | None = None) -> torch.Tensor:
        inputs = self._inputs(x, timesteps, context, y, control)
        rows = x.shape[0]
        with self._lock:
            if self._runner is None:
                raise RuntimeError(f"engine {self.name} is closed")
            if not self.cuda_graphs:
                return self._hand_out(self._run(inputs), rows, x, copy=False)
            key = tuple(tuple(t.shape) for t in inputs)
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._capture(key, inputs)
            else:
                self._graphs.move_to_end(key)
                for static, value in zip(entry.inputs, inputs):
                    static.copy_(value)
                entry.graph.replay()
            # the graph's output buffer is overwritten by the next replay: hand out a copy
            return self._hand_out(entry.output, rows, x, copy=True)

    def _hand_out(self, outputs: list[torch.Tensor], rows: int, x: torch.Tensor,
                  copy: bool) -> torch.Tensor | list[torch.Tensor]:
        """The call's rows of each output (the compiled graph may leave them channels-last): the
        UNet's one tensor, or a ControlNet's residuals as a list (the family's output_names)."""
        outs = [out[:rows].to(x.device, x.dtype, copy=copy, memory_format=torch.contiguous_format) for out in outputs]
        return outs[0] if len(outs) == 1 else outs

    def _run(self, inputs: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        out = self._runner(*inputs)
        return list(out[:len(self.family.output_names)]) if isinstance(out, (list, tuple)) else [out]

    def _capture(self, key: tuple, inputs: tuple[torch.Tensor, ...]) -> _Graph:
        static = static_copies(inputs)
        # warm up off the capture: first runs load kernels and size workspaces, which capture forbids
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self._run(static)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            output = self._run(static)
        graph.replay()  # capture records without computing: this replay computes the first call
        entry = _Graph(graph, static, output)
        self._graphs[key] = entry
        while len(self._graphs) > MAX_GRAPHS:
            self._graphs.popitem(last=False)
        return entry

    def close(self) -> None:
        with self._lock:
            self._graphs.clear()
            self._runner = None
            self._weights = []
