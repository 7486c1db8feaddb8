"""Running a deserialized TensorRT engine (TensorRT 10, 11 or TensorRT for RTX) on PyTorch tensors.

One execution context per engine, created once. Input and output buffers are kept per call shape
(a few shapes recur all generation long: cond/uncond, hires passes), so steps allocate nothing
but the returned tensor. Inputs are copied into the engine's own dtype in one step (fp16 stays
fp16). The engine runs on PyTorch's current stream: on a private stream its reads would race the
sampler's writes (black images). Activation memory comes from PyTorch's allocator, one buffer
shared by all engines of a backend, so the WebUI's VRAM figures stay true.

TensorRT for RTX gets a runtime configuration: its own CUDA graphs (they follow its dynamic-shape
kernels, which our capture could not), shape-specialized kernels compiled eagerly at a shape's
first call (every step of a generation then runs the same kernels, so a seed gives the same image
whenever the compile finishes), and the runtime cache that keeps those kernels for the next start.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from types import ModuleType
from typing import Mapping

import numpy as np
import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.backends.base import Engine, WeightsUnsupported, control_inputs
from sd_unet_trt.trt_core.backends.tensorrt.runtime_cache import RuntimeCacheFile
from sd_unet_trt.trt_core.profiles import Profile

MAX_SHAPES = 8  # bound buffers kept per engine; older shapes are dropped first
TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16,
                "INT32": torch.int32, "INT64": torch.int64, "BOOL": torch.bool}
log = logging.getLogger(__name__)


class EngineRunError(RuntimeError):
    """TensorRT refused to run the call; the message carries TensorRT's errors."""


class RefitError(WeightsUnsupported):
    """New weights could not be put into the engine; the engine still holds its old weights."""


def current_stream_handle(device: torch.device) -> int:
    """PyTorch's current stream on `device`; 0 for host memory (only the test double runs there)."""
    if device.type == "cuda":
        return torch.cuda.current_stream(device).cuda_stream
    return 0


class ActivationMemory:
    """The activation ("device") memory of every engine of one backend: one buffer per device from
    PyTorch's allocator, grown to the largest engine's need. Engines run one at a time on the
    current stream, so they can share it: `lock` makes them take turns when callers are threads."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}
        self.generation = 0  # bumps when a buffer moves; contexts and CUDA graphs must follow
        self.lock = threading.Lock()

    def address(self, nbytes: int, device: torch.device) -> int:
        key = str(device)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < nbytes:
            self._buffers.pop(key, None)
            buffer = torch.empty(max(int(nbytes), 1), dtype=torch.uint8, device=device)
            self._buffers[key] = buffer
            self.generation += 1
        return buffer.data_ptr()

    def release(self, device: torch.device) -> None:
        if self._buffers.pop(str(device), None) is not None:
            self.generation += 1

    def held_bytes(self) -> int:
        return sum(b.numel() for b in self._buffers.values())


@dataclass
class _Bound:
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    graph: "torch.cuda.CUDAGraph | None" = None
    graph_generation: int = -1


class TensorRTEngine(Engine):
    def __init__(self, trt: ModuleType, runtime, cuda_engine, logger, name: str, family: ModelFamily,
                 profile: Profile, device: torch.device, memory: ActivationMemory, plan_bytes: int,
                 cuda_graphs: bool = False, runtime_cache: RuntimeCacheFile | None = None):
        self.trt, self._runtime, self.cuda_engine, self.logger = trt, runtime, cuda_engine, logger
        self.name, self.family, self.profile, self.device = name, family, profile, device
        self._memory, self._plan_bytes = memory, plan_bytes
        # A call, a refit and close take turns: a call fills the shape's kept buffers and reads the
        # shared activation memory, so it excludes every engine of the backend, not just this one.
        self._lock = memory.lock
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        names = [cuda_engine.get_tensor_name(i) for i in range(cuda_engine.num_io_tensors)]
        self.input_names = [n for n in names if cuda_engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if cuda_engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if set(self.input_names) != set(family.input_names) or set(self.output_names) != set(family.output_names):
            raise EngineRunError(f"{name}: the engine takes {self.input_names} and gives {self.output_names}; "
                                 f"a {family.label} takes {list(family.input_names)} and gives "
                                 f"{list(family.output_names)}")
        self.dtypes = {n: TORCH_DTYPES[cuda_engine.get_tensor_dtype(n).name] for n in names}
        self.limits = {n: tuple(tuple(d) for d in cuda_engine.get_tensor_profile_shape(n, 0)) for n in self.input_names}
        # TensorRT 11 and TensorRT for RTX only have the _v2 size (an int64); 10.0 only the old one
        self.activation_bytes = int(cuda_engine.device_memory_size_v2 if hasattr(cuda_engine, "device_memory_size_v2")
                                    else cuda_engine.device_memory_size)
        self.runtime_cache = runtime_cache
        self._runtime_config = None
        self.context = self._create_context()
        self._bound: OrderedDict[tuple, _Bound] = OrderedDict()
        self._active: tuple | None = None
        self._memory_generation = -1

    def _create_context(self):
        trt, user_managed = self.trt, self.trt.ExecutionContextAllocationStrategy.USER_MANAGED
        if self.runtime_cache is None:
            return self.cuda_engine.create_execution_context(user_managed)
        config = self.cuda_engine.create_runtime_config()
        config.set_execution_context_allocation_strategy(user_managed)
        config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
        config.dynamic_shapes_kernel_specialization_strategy = trt.DynamicShapesKernelSpecializationStrategy.EAGER
        cache = config.create_runtime_cache()
        self.runtime_cache.load_into(cache)
        if not config.set_runtime_cache(cache):
            raise EngineRunError(f"{self.name}: TensorRT for RTX refused its runtime cache: {self.logger.take_errors()}")
        self._runtime_config = (config, cache)  # the context refers to both
        return self.cuda_engine.create_execution_context(config)

    def save_runtime_cache(self) -> None:
        if self._runtime_config is not None:
            self.runtime_cache.save(self._runtime_config[1])

    @property
    def memory_bytes(self) -> int:
        return self._plan_bytes

    @property
    def shared_memory(self) -> tuple[object, int]:
        return (self._memory, str(self.device)), self.activation_bytes

    def _feeds(self, x, timesteps, context, y, control=None) -> dict[str, torch.Tensor]:
        given = {"x": x, "timesteps": timesteps, "context": context}
        if y is not None:
            given["y"] = y
        given.update(zip(self.family.control_names, control_inputs(self.family, x, control, self.name)))
        if set(given) != set(self.input_names):
            raise ValueError(f"{self.name}: the engine takes {self.input_names}, the call gave {sorted(given)}")
        feeds = {}
        for name in self.input_names:
            shape = tuple(given[name].shape)
            smallest, _, largest = self.limits[name]
            if len(shape) != len(smallest) or not all(a <= s <= b for a, s, b in zip(smallest, shape, largest)):
                raise ValueError(f"{self.name}: {name} of shape {list(shape)} is outside the engine's profile "
                                 f"({list(smallest)} to {list(largest)})")
            feeds[name] = given[name]
        return feeds

    def _bind(self, key: tuple, feeds: dict[str, torch.Tensor]) -> _Bound:
        bound = self._bound.get(key)
        if bound is None:
            self._set_shapes(feeds)
            outputs = {}
            for name in self.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    raise EngineRunError(f"{self.name}: TensorRT could not infer the shape of {name}: "
                                         f"{self.logger.take_errors()}")
                outputs[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
            inputs = {n: torch.empty(t.shape, dtype=self.dtypes[n], device=self.device) for n, t in feeds.items()}
            bound = _Bound(inputs, outputs)
            self._bound[key] = bound
            while len(self._bound) > MAX_SHAPES:
                dropped, _ = self._bound.popitem(last=False)
                if dropped == self._active:
                    self._active = None
            self._active = None
        self._bound.move_to_end(key)
        if self._active != key:
            self._set_shapes(bound.inputs)
            for name, tensor in {**bound.inputs, **bound.outputs}.items():
                if not self.context.set_tensor_address(name, tensor.data_ptr()):
                    raise EngineRunError(f"{self.name}: TensorRT refused the address of {name}: {self.logger.take_errors()}")
            self._active = key
        return bound

    def _set_shapes(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for name, tensor in tensors.items():
            if not self.context.set_input_shape(name, tuple(tensor.shape)):
                raise EngineRunError(f"{self.name}: TensorRT refused shape {list(tensor.shape)} for {name}: "
                                     f"{self.logger.take_errors()}")

    def _attach_memory(self) -> None:
        address = self._memory.address(self.activation_bytes, self.device)
        if self._memory.generation != self._memory_generation:
            if hasattr(self.context, "set_device_memory"):  # 10.1 and later; 11 and RTX have only this
                self.context.set_device_memory(address, self.activation_bytes)
            else:
                self.context.device_memory = address
            self._memory_generation = self._memory.generation

    def _enqueue(self, stream: int) -> None:
        if not self.context.execute_async_v3(stream):
            raise EngineRunError(f"{self.name}: TensorRT failed to run: {self.logger.take_errors()}")

    def _run_graph(self, bound: _Bound) -> None:
        """Replay this shape's CUDA graph, capturing it first (after one plain run, which lets
        TensorRT finish its lazy per-shape setup outside the capture)."""
        if bound.graph is None or bound.graph_generation != self._memory_generation:
            self._enqueue(current_stream_handle(self.device))
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):
                    self._enqueue(current_stream_handle(self.device))
            except RuntimeError as e:
                log.warning("%s: CUDA graph capture failed (%s); running without graphs", self.name, e)
                self.cuda_graphs = False
                return
            bound.graph, bound.graph_generation = graph, self._memory_generation
        bound.graph.replay()

    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                 y: torch.Tensor | None = None, control: list[torch.Tensor] | None = None) -> torch.Tensor:
        feeds = self._feeds(x, timesteps, context, y, control)
        with self._lock:
            if self.context is None:
                raise EngineRunError(f"{self.name} is closed")
            return self._run(feeds, x)

    def _run(self, feeds: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        key = tuple(tuple(t.shape) for t in feeds.values())
        new_shape = key not in self._bound
        bound = self._bind(key, feeds)
        for name, tensor in feeds.items():
            bound.inputs[name].copy_(tensor)  # one copy, cast straight to the engine's dtype
        self._attach_memory()
        if self.cuda_graphs:
            self._run_graph(bound)
        if not self.cuda_graphs or bound.graph is None:
            self._enqueue(current_stream_handle(self.device))
        if new_shape:
            self.save_runtime_cache()  # a new shape's kernels were compiled in that first run
        # fresh tensors: callers keep outputs while the next call reuses the buffers; the family's outputs
        # in its order (a UNet's one, a ControlNet's residuals as a list)
        outs = [bound.outputs[name].to(device=x.device, dtype=x.dtype, copy=True) for name in self.family.output_names]
        return outs[0] if len(outs) == 1 else outs

    def set_weights(self, weights: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Refit the named weights (ONNX initializer names = the UNet's state-dict names) from
        tensors in memory: no export, no ONNX read. Checks everything before touching the engine.
        A running call ends on the weights it began with."""
        with self._lock:
            if self.context is None:
                raise RefitError(f"{self.name} is closed")
            self._refit(weights)

    def _refit(self, weights: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        trt = self.trt
        if not self.cuda_engine.refittable:
            raise RefitError(f"{self.name} was built without refit support; rebuild it to apply LoRA")
        refitter = trt.Refitter(self.cuda_engine, self.logger)
        known = set(refitter.get_all_weights())
        unknown = sorted(set(weights) - known)
        if unknown:
            raise RefitError(f"{self.name}: the engine has no weights named {', '.join(unknown[:5])}"
                             + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
        arrays = {}
        for name, value in weights.items():
            prototype = refitter.get_weights_prototype(name)
            array = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            if array.size != prototype.size:
                raise RefitError(f"{self.name}: weight {name} has {array.size} values {list(array.shape)}, "
                                 f"the engine's has {prototype.size}")
            # in the engine's own type: a strongly typed fp16 engine holds fp16 weights
            arrays[name] = np.ascontiguousarray(array.astype(trt.nptype(prototype.dtype)).reshape(-1))
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()  # no run may read weights mid-refit
        kept = []  # TensorRT reads the host arrays during refit_cuda_engine
        for name, array in arrays.items():
            w = trt.Weights(array)
            kept.append(w)
            if not refitter.set_named_weights(name, w):
                raise RefitError(f"{self.name}: TensorRT refused weight {name}: {self.logger.take_errors()}")
        missing = list(refitter.get_missing_weights())
        if missing:
            raise RefitError(f"{self.name}: refit also needs {', '.join(missing[:5])}")
        if not refitter.refit_cuda_engine():
            raise RefitError(f"{self.name}: refit failed: {self.logger.take_errors()}")
        for bound in self._bound.values():
            bound.graph = None  # captured graphs hold the old weights' launch parameters

    def close(self) -> None:
        with self._lock:
            if self.context is not None:
                self.save_runtime_cache()
            self._bound.clear()
            self._active = None
            self.context = None
            self._runtime_config = None
            self.cuda_engine = None
            self._runtime = None
