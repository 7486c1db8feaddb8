"""The runtime: engines, execution contexts, TensorRT for RTX's runtime configuration and cache,
and the refitter. `execute_async_v3` reads the inputs from the raw addresses the caller set, runs
the ONNX with ONNX Runtime on the CPU and writes the outputs to the output addresses."""
from __future__ import annotations

import ctypes
import json
import threading

import numpy as np

from tests.trt_double.fake_tensorrt._builder import PLAN_HEADER_SIZE, pack_plan, plan_info
from tests.trt_double.fake_tensorrt._state import RTX_RUNS_ON, State, _Strict, count
from tests.trt_double.fake_tensorrt._types import (NUMPY, ONNX_TO_DTYPE, CudaGraphStrategy, DataType,
                                                  DynamicShapesKernelSpecializationStrategy, EngineValidity,
                                                  ExecutionContextAllocationStrategy, IHostMemory, ILogger,
                                                  TensorIOMode, error)

RUNTIME_CACHE_MAGIC = b"FAKE-RTX-RUNTIME-CACHE\x00"


class IRuntimeCache(_Strict):
    """Kernels compiled just in time, one entry per (engine, shapes); valid for one GPU and version."""

    def __init__(self) -> None:
        self._kernels: set[str] = set()

    def serialize(self) -> IHostMemory:
        body = {"version": State.flavor.version, "device": State.device, "kernels": sorted(self._kernels)}
        return IHostMemory(RUNTIME_CACHE_MAGIC + json.dumps(body).encode())

    def deserialize(self, blob) -> bool:
        data = bytes(blob)
        if State.device is None or not data.startswith(RUNTIME_CACHE_MAGIC):
            return False
        try:
            body = json.loads(data[len(RUNTIME_CACHE_MAGIC):])
        except ValueError:
            return False
        if (body.get("version"), body.get("device")) != (State.flavor.version, State.device):
            return False
        self._kernels = set(body["kernels"])
        return True

    def reset(self) -> bool:
        self._kernels.clear()
        return True


class IRuntimeConfig(_Strict):
    def __init__(self) -> None:
        self._strategy = ExecutionContextAllocationStrategy.STATIC
        self._cache: IRuntimeCache | None = None
        self._graphs = CudaGraphStrategy.DISABLED
        self._specialization = DynamicShapesKernelSpecializationStrategy.LAZY

    def set_execution_context_allocation_strategy(self, strategy=ExecutionContextAllocationStrategy.STATIC) -> None:
        self._strategy = ExecutionContextAllocationStrategy(strategy)

    def get_execution_context_allocation_strategy(self) -> ExecutionContextAllocationStrategy:
        return self._strategy

    def create_runtime_cache(self) -> IRuntimeCache:
        return IRuntimeCache()

    def set_runtime_cache(self, cache: IRuntimeCache | None = None) -> bool:
        if cache is not None and not isinstance(cache, IRuntimeCache):
            raise TypeError("set_runtime_cache takes an IRuntimeCache")
        self._cache = cache
        return True

    def get_runtime_cache(self) -> IRuntimeCache | None:
        return self._cache

    @property
    def cuda_graph_strategy(self) -> CudaGraphStrategy:
        return self._graphs

    @cuda_graph_strategy.setter
    def cuda_graph_strategy(self, strategy: CudaGraphStrategy) -> None:
        self._graphs = CudaGraphStrategy(strategy)

    @property
    def dynamic_shapes_kernel_specialization_strategy(self) -> DynamicShapesKernelSpecializationStrategy:
        return self._specialization

    @dynamic_shapes_kernel_specialization_strategy.setter
    def dynamic_shapes_kernel_specialization_strategy(self, strategy: DynamicShapesKernelSpecializationStrategy) -> None:
        self._specialization = DynamicShapesKernelSpecializationStrategy(strategy)


class ICudaEngine(_Strict):
    def __init__(self, header: dict, onnx_bytes: bytes, logger: ILogger):
        import onnx

        self._header = header
        self._model = onnx.load_from_string(onnx_bytes)
        init = {i.name for i in self._model.graph.initializer}
        self._io: list[tuple[str, TensorIOMode, DataType, tuple[int, ...]]] = []
        for vi, mode in [(v, TensorIOMode.INPUT) for v in self._model.graph.input if v.name not in init] + \
                        [(v, TensorIOMode.OUTPUT) for v in self._model.graph.output]:
            t = vi.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            self._io.append((vi.name, mode, ONNX_TO_DTYPE[t.elem_type], dims))
        self._session = None
        self._lock = threading.Lock()
        self._logger = logger

    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        import onnxruntime as ort

        with self._lock:
            if self._session is None:
                options = ort.SessionOptions()
                options.intra_op_num_threads = 2
                self._session = ort.InferenceSession(self._model.SerializeToString(), options,
                                                     providers=["CPUExecutionProvider"])
            return self._session.run(None, feeds)

    def _entry(self, name: str):
        for entry in self._io:
            if entry[0] == name:
                return entry
        raise KeyError(name)

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        try:
            return self._entry(name)[1]
        except KeyError:
            return TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._entry(name)[2]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[3]

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        if profile_index != 0 or self.get_tensor_mode(name) != TensorIOMode.INPUT:
            raise ValueError(f"no profile shape for {name!r} in profile {profile_index}")
        return [tuple(s) for s in self._header["shapes"][name][0]]

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    @property
    def refittable(self) -> bool:
        return "REFIT" in self._header["flags"]

    @property
    def _activation_bytes(self) -> int:
        # activation memory for the largest shapes of the profile: a plausible figure
        return 4096 + sum(int(np.prod(s[0][2])) * 4 for s in self._header["shapes"].values())

    @property
    def device_memory_size(self) -> int:
        return self._activation_bytes

    @property
    def device_memory_size_v2(self) -> int:
        return self._activation_bytes

    def create_runtime_config(self) -> IRuntimeConfig:
        return IRuntimeConfig()

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC) -> "IExecutionContext":
        count("contexts")
        if isinstance(strategy, IRuntimeConfig):
            if not State.flavor.rtx:
                raise TypeError("create_execution_context(): incompatible function arguments")
            return IExecutionContext(self, strategy.get_execution_context_allocation_strategy(), strategy)
        return IExecutionContext(self, ExecutionContextAllocationStrategy(strategy), None)

    def serialize(self) -> IHostMemory:
        return pack_plan(self._header, self._model.SerializeToString())


def _runnable_here(header: dict) -> str:
    """Why a plan cannot run on the double's GPU ("" when it can)."""
    if (header.get("library"), header.get("version")) != (State.flavor.library, State.flavor.version):
        return (f"The engine plan file is not compatible with this version of TensorRT "
                f"({header.get('library')} {header.get('version')})")
    if State.device is None:
        return "Cuda Runtime (cudaError 35: CUDA driver version is insufficient for CUDA runtime version)"
    if State.flavor.rtx and State.device not in RTX_RUNS_ON:
        return (f"The engine cannot run on this GPU, which has compute capability {State.device}. Supported compute "
                f"capabilities: {' '.join(RTX_RUNS_ON)}")
    if State.device not in header.get("targets", []):
        return f"The engine plan file is generated on an incompatible device ({', '.join(header.get('targets', []))})"
    return ""


class Runtime(_Strict):
    def __init__(self, logger: ILogger):
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        count("deserializations")
        header = plan_info(data)
        if header is None:
            error(self._logger, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
            return None
        problem = _runnable_here(header)
        if problem:
            error(self._logger, f"IRuntime::deserializeCudaEngine: Error Code 6: {problem}")
            return None
        return ICudaEngine(header, data[PLAN_HEADER_SIZE:], self._logger)

    @property
    def engine_header_size(self) -> int:
        return PLAN_HEADER_SIZE

    def get_engine_validity(self, buffer) -> tuple:
        """(EngineValidity, diagnostics bits) from the first engine_header_size bytes of a plan."""
        header = plan_info(bytes(buffer))
        if header is None:
            return EngineValidity.INVALID, 1
        problem = _runnable_here(header)
        if problem:
            error(self._logger, f"IRuntime::getEngineValidity: {problem}")
            return EngineValidity.INVALID, 2
        return EngineValidity.VALID, 0


def _host_array(address: int, shape: tuple[int, ...], dtype: DataType) -> np.ndarray:
    """A numpy view of `shape` elements at a raw address (host memory stands in for the device)."""
    np_type = np.dtype(NUMPY[dtype])
    n = int(np.prod(shape)) if shape else 1
    buf = (ctypes.c_char * (n * np_type.itemsize)).from_address(address)
    return np.frombuffer(buf, dtype=np_type, count=n).reshape(shape)


class IExecutionContext(_Strict):
    def __init__(self, engine: ICudaEngine, strategy: ExecutionContextAllocationStrategy,
                 runtime_config: IRuntimeConfig | None):
        self._engine, self._strategy, self._runtime_config = engine, strategy, runtime_config
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._device_memory: int | None = None
        self._compiled: set[str] = set()

    @property
    def engine(self) -> ICudaEngine:
        return self._engine

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        if self._engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            return False
        mn, _, mx = self._engine.get_tensor_profile_shape(name, 0)
        if len(shape) != len(mn) or not all(a <= s <= b for a, s, b in zip(mn, shape, mx)):
            return False
        self._shapes[name] = shape
        return True

    def _output_shapes(self) -> dict[str, tuple[int, ...]] | None:
        inputs = [e for e in self._engine._io if e[1] == TensorIOMode.INPUT]
        if any(e[0] not in self._shapes for e in inputs):
            return None
        # the UNet's output has x's shape; symbolic dims are resolved by name across the graph
        sizes: dict[str, int] = {}
        for vi in self._engine._model.graph.input:
            if vi.name in self._shapes:
                for d, v in zip(vi.type.tensor_type.shape.dim, self._shapes[vi.name]):
                    if d.dim_param and sizes.setdefault(d.dim_param, v) != v:
                        return None
        out = {}
        for vi in self._engine._model.graph.output:
            dims = []
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value"):
                    dims.append(d.dim_value)
                elif d.dim_param in sizes:
                    dims.append(sizes[d.dim_param])
                else:  # a size the graph computes (a ControlNet's downsampled residuals): as TensorRT does
                    return self._inferred_output_shapes()
            out[vi.name] = tuple(dims)
        return out

    def _inferred_output_shapes(self) -> dict[str, tuple[int, ...]] | None:
        """The outputs' shapes for the inputs' set shapes, by ONNX shape inference through the graph."""
        import onnx

        key = tuple(sorted(self._shapes.items()))
        cache = self._engine.__dict__.setdefault("_inferred_shapes", {})
        if key not in cache:
            graph = onnx.helper.make_graph(  # the nodes with their weights' shapes: inference needs no values
                list(self._engine._model.graph.node), "shapes",
                [onnx.helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, self._shapes[vi.name])
                 for vi in self._engine._model.graph.input if vi.name in self._shapes],
                [onnx.helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, None)
                 for vi in self._engine._model.graph.output],
                list(self._engine._model.graph.initializer))
            model = onnx.helper.make_model(graph, opset_imports=self._engine._model.opset_import)
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True).graph.output
            shapes = {vi.name: tuple(d.dim_value if d.HasField("dim_value") else -1
                                     for d in vi.type.tensor_type.shape.dim) for vi in inferred}
            cache[key] = None if any(-1 in s or not s for s in shapes.values()) else shapes
        return cache[key]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if self._engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self._shapes.get(name, self._engine.get_tensor_shape(name))
        outs = self._output_shapes()
        return outs[name] if outs and name in outs else self._engine.get_tensor_shape(name)

    def infer_shapes(self) -> list[str]:
        return [e[0] for e in self._engine._io if e[1] == TensorIOMode.INPUT and e[0] not in self._shapes]

    @property
    def all_binding_shapes_specified(self) -> bool:
        return not self.infer_shapes()

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if self._engine.get_tensor_mode(name) == TensorIOMode.NONE or not isinstance(memory, int) or memory == 0:
            return False
        self._addresses[name] = memory
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    @property
    def device_memory(self) -> int:
        raise AttributeError("device_memory is write-only")

    @device_memory.setter
    def device_memory(self, memory: int) -> None:
        self._device_memory = int(memory)

    def set_device_memory(self, memory: int, size: int) -> None:
        if int(size) < self._engine._activation_bytes:
            error(self._engine._logger, f"IExecutionContext::setDeviceMemoryV2: Error Code 3: size {size} is smaller "
                                        f"than the engine's {self._engine._activation_bytes}")
            return
        self._device_memory = int(memory)

    def _compile_for_shapes(self) -> None:
        """TensorRT for RTX compiles kernels for a shape at its first run unless its cache has them."""
        if not State.flavor.rtx:
            return
        key = json.dumps([self._engine._header["shapes"], sorted(self._shapes.items())])
        cache = self._runtime_config.get_runtime_cache() if self._runtime_config is not None else None
        if key in self._compiled or (cache is not None and key in cache._kernels):
            return
        count("jit_compiles")
        self._compiled.add(key)
        if cache is not None:
            cache._kernels.add(key)

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not isinstance(stream_handle, int):
            raise TypeError("execute_async_v3 takes the stream as an integer handle")
        problem = ""
        if self.infer_shapes():
            problem = f"input shapes not specified: {', '.join(self.infer_shapes())}"
        elif self._strategy == ExecutionContextAllocationStrategy.USER_MANAGED and not self._device_memory:
            problem = "device memory was not set for a context with user-managed allocation"
        elif any(e[0] not in self._addresses for e in self._engine._io):
            problem = f"address is not set for tensor {next(e[0] for e in self._engine._io if e[0] not in self._addresses)}"
        outs = None if problem else self._output_shapes()
        if problem or outs is None:
            count("rejected_runs")
            error(self._engine._logger, f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error "
                                        f"({problem or 'inconsistent input shapes'})")
            return False
        self._compile_for_shapes()
        feeds = {}
        for name, mode, dtype, _ in self._engine._io:
            if mode == TensorIOMode.INPUT:
                feeds[name] = _host_array(self._addresses[name], self._shapes[name], dtype).copy()
        results = self._engine._run(feeds)
        for vi, value in zip(self._engine._model.graph.output, results):
            _, _, dtype, _ = self._engine._entry(vi.name)
            target = _host_array(self._addresses[vi.name], outs[vi.name], dtype)
            target[...] = value.astype(target.dtype)
        count("runs")
        count(f"stream:{stream_handle}")
        return True
