"""A strict test double of TensorRT 10's Python module `tensorrt`, for machines without a GPU.

Strict: it refuses what TensorRT refuses (execution before every input shape and every tensor
address is set, shapes outside the profile, min > opt > max, a dynamic input without a profile,
refit with unknown names or a wrong number of values, bytes that are not an engine, unknown
attributes read or written). Real: a serialized "engine" holds the parsed ONNX and its profile;
`execute_async_v3` reads the inputs from the raw addresses the caller set, runs the graph with
ONNX Runtime on the CPU, and writes the outputs to the output addresses. So the backend's buffer,
shape and address handling is exercised for real, with host (CPU) tensors standing in for device
memory.

Every public name here (module attributes, classes, their public members) must exist in the
real bindings; tests/test_tensorrt_api.py checks that against the bindings wheel's string table.
Test-only helpers start with an underscore.
"""
from __future__ import annotations

import ctypes
import enum
import hashlib
import json
import threading
from pathlib import Path

import numpy as np

__version__ = "10.16.1.11"

_PLAN_MAGIC = b"FAKE-TRT-PLAN\x00"
_CACHE_MAGIC = b"FAKE-TRT-TIMING\x00"
# Counters the tests read: how the backend used the library.
_stats: dict[str, int] = {}
_used_names: set[str] = set()


def _count(key: str, n: int = 1) -> None:
    _stats[key] = _stats.get(key, 0) + n


def _reset() -> None:
    _stats.clear()


class _Strict:
    """Reading or writing an attribute the real class lacks raises, as pybind11 objects do."""

    def __getattribute__(self, name: str):
        if not name.startswith("_"):
            _used_names.add(name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value) -> None:
        if not name.startswith("_"):
            _used_names.add(name)
            prop = getattr(type(self), name, None)
            if not isinstance(prop, property) or prop.fset is None:
                raise AttributeError(f"'{type(self).__name__}' object has no writable attribute '{name}'")
        object.__setattr__(self, name, value)


# ---- enums -------------------------------------------------------------------------------

class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    BF16 = 7
    INT64 = 8


_ONNX_TO_DTYPE = {1: DataType.FLOAT, 10: DataType.HALF, 16: DataType.BF16, 6: DataType.INT32, 7: DataType.INT64,
                  9: DataType.BOOL, 2: DataType.UINT8, 3: DataType.INT8}
_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT32: np.int32,
          DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT8: np.int8}


def nptype(dtype: DataType):
    return _NUMPY[dtype]


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    DEBUG = 2
    REFIT = 4
    BF16 = 17


class NetworkDefinitionCreationFlag(enum.IntEnum):
    STRONGLY_TYPED = 1


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        pass

    def log(self, severity: "ILogger.Severity", msg: str) -> None:
        raise NotImplementedError


class Logger(ILogger):
    INTERNAL_ERROR = ILogger.Severity.INTERNAL_ERROR
    ERROR = ILogger.Severity.ERROR
    WARNING = ILogger.Severity.WARNING
    INFO = ILogger.Severity.INFO
    VERBOSE = ILogger.Severity.VERBOSE

    def __init__(self, min_severity: ILogger.Severity = ILogger.Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        pass


def _error(logger: ILogger, msg: str) -> None:
    logger.log(ILogger.Severity.ERROR, msg)


class IProgressMonitor:
    def __init__(self) -> None:
        pass

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        raise NotImplementedError

    def step_complete(self, phase_name: str, step: int) -> bool:
        raise NotImplementedError

    def phase_finish(self, phase_name: str) -> None:
        raise NotImplementedError


class IHostMemory(bytes):
    """Serialized data; supports the buffer protocol like the real one."""

    @property
    def nbytes(self) -> int:
        return len(self)


# ---- network and parser ------------------------------------------------------------------

class ITensor(_Strict):
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType):
        self._name, self._shape, self._dtype = name, shape, dtype

    @property
    def name(self) -> str:
        return self._name

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def dtype(self) -> DataType:
        return self._dtype


class INetworkDefinition(_Strict):
    def __init__(self, flags: int):
        self._flags = flags
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._onnx: bytes | None = None

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


class ParserError(_Strict):
    def __init__(self, desc: str):
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return self._desc


def _supported_operators() -> set[str]:
    table = Path(__file__).resolve().parents[1] / "data" / "onnx_tensorrt_operators_trt10.tsv"
    rows = [line.split("\t") for line in table.read_text().splitlines() if line and not line.startswith("#")]
    return {r[0] for r in rows[1:] if r[1].startswith("Y")}


class OnnxParser(_Strict):
    def __init__(self, network: INetworkDefinition, logger: ILogger):
        self._network, self._logger, self._errors = network, logger, []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors = []

    def parse_from_file(self, model: str) -> bool:
        import onnx

        try:
            proto = onnx.load(model, load_external_data=True)
            onnx.checker.check_model(proto)
        except Exception as e:  # the real parser reports, it does not raise
            self._errors.append(ParserError(f"failed to parse {model}: {e}"))
            return False
        return self._parse(proto)

    def parse(self, model: bytes) -> bool:
        import onnx

        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as e:
            self._errors.append(ParserError(f"failed to parse ONNX bytes: {e}"))
            return False
        return self._parse(proto)

    def _parse(self, proto) -> bool:
        supported = _supported_operators()
        bad = sorted({n.op_type for n in proto.graph.node if n.op_type not in supported})
        if bad:
            self._errors.append(ParserError(f"No importer registered for op: {', '.join(bad)}"))
            return False
        initializers = {i.name for i in proto.graph.initializer}

        def tensor(vi) -> ITensor:
            t = vi.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            return ITensor(vi.name, dims, _ONNX_TO_DTYPE[t.elem_type])

        self._network._inputs = [tensor(vi) for vi in proto.graph.input if vi.name not in initializers]
        self._network._outputs = [tensor(vi) for vi in proto.graph.output]
        self._network._onnx = proto.SerializeToString()
        return True


# ---- builder -----------------------------------------------------------------------------

class IOptimizationProfile(_Strict):
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:
        mn, op, mx = (tuple(int(d) for d in s) for s in (min, opt, max))
        if not len(mn) == len(op) == len(mx):
            raise ValueError(f"{input}: min, opt and max have different ranks")
        if any(d < 0 for d in mn) or not all(a <= b <= c for a, b, c in zip(mn, op, mx)):
            raise ValueError(f"{input}: profile needs 0 <= min <= opt <= max in every dimension, got {mn} {op} {mx}")
        self._shapes[input] = (mn, op, mx)

    def get_shape(self, input: str):
        return [list(s) for s in self._shapes[input]]


class ITimingCache(_Strict):
    def __init__(self, entries: set[str], device: str):
        self._entries, self._device = set(entries), device

    def serialize(self) -> IHostMemory:
        body = json.dumps({"version": __version__, "device": self._device, "entries": sorted(self._entries)})
        return IHostMemory(_CACHE_MAGIC + body.encode())

    def combine(self, input_cache: "ITimingCache", ignore_mismatch: bool) -> bool:
        if input_cache._device != self._device and not ignore_mismatch:
            return False
        self._entries |= input_cache._entries
        return True

    def reset(self) -> bool:
        self._entries.clear()
        return True


_DEVICE = "sm_89"  # the GPU the double pretends to be; tests may change it


class IBuilderConfig(_Strict):
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger
        self._flags: set[BuilderFlag] = set()
        self._pools: dict[MemoryPoolType, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._timing_cache: ITimingCache | None = None
        self._level = 3
        self._monitor: IProgressMonitor | None = None

    def set_flag(self, flag: BuilderFlag) -> None:
        self._flags.add(BuilderFlag(flag))

    def clear_flag(self, flag: BuilderFlag) -> None:
        self._flags.discard(BuilderFlag(flag))

    def get_flag(self, flag: BuilderFlag) -> bool:
        return BuilderFlag(flag) in self._flags

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        if pool_size < 0:
            raise ValueError("pool size must be >= 0")
        self._pools[MemoryPoolType(pool)] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self._pools.get(MemoryPoolType(pool), 24 * 1024**3)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    @property
    def builder_optimization_level(self) -> int:
        return self._level

    @builder_optimization_level.setter
    def builder_optimization_level(self, level: int) -> None:
        if not 0 <= int(level) <= 5:
            raise ValueError("builder optimization level must be within 0-5")
        self._level = int(level)

    @property
    def progress_monitor(self) -> IProgressMonitor | None:
        return self._monitor

    @progress_monitor.setter
    def progress_monitor(self, monitor: IProgressMonitor | None) -> None:
        self._monitor = monitor

    def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
        data = bytes(serialized_timing_cache)
        if not data:
            return ITimingCache(set(), _DEVICE)
        if not data.startswith(_CACHE_MAGIC):
            _error(self._logger, "Invalid timing cache: magic tag does not match")
            return ITimingCache(set(), _DEVICE)
        body = json.loads(data[len(_CACHE_MAGIC):])
        return ITimingCache(set(body["entries"]), body["device"])

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache._device != _DEVICE and not ignore_mismatch:
            _error(self._logger, "timing cache was created on another device")
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing_cache


class Builder(_Strict):
    def __init__(self, logger: ILogger):
        self._logger = logger

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        return INetworkDefinition(flags)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self._logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        if network._onnx is None:
            _error(self._logger, "Network must have at least one output")
            return None
        dynamic = [t for t in network._inputs if -1 in t.shape]
        if dynamic and not config._profiles:
            _error(self._logger, "Network has dynamic or shape inputs, but no optimization profile has been defined.")
            return None
        shapes: dict[str, list] = {}
        for t in network._inputs:
            for p in config._profiles:
                if t.name not in p._shapes:
                    if -1 in t.shape:
                        _error(self._logger, f"Optimization profile is missing values for input {t.name}")
                        return None
                    continue
                for s in p._shapes[t.name]:
                    if len(s) != len(t.shape) or any(d != -1 and d != v for d, v in zip(t.shape, s)):
                        _error(self._logger, f"{t.name}: profile dimensions {s} are inconsistent with the network's {t.shape}")
                        return None
            shapes[t.name] = [list(map(list, config._profiles[0]._shapes.get(t.name, (t.shape,) * 3)))]
        steps = 4
        monitor = config._monitor
        if monitor is not None:
            monitor.phase_start("Building engine", None, steps)
            for step in range(steps):
                monitor.phase_start("Timing tactics", "Building engine", 2)
                keep = monitor.step_complete("Timing tactics", 0) and monitor.step_complete("Timing tactics", 1)
                monitor.phase_finish("Timing tactics")
                if not keep or not monitor.step_complete("Building engine", step):
                    monitor.phase_finish("Building engine")
                    _error(self._logger, "Build was cancelled by the progress monitor.")
                    return None
            monitor.phase_finish("Building engine")
        if config._timing_cache is not None:
            keys = {hashlib.sha256(network._onnx + json.dumps(shapes).encode() + str(i).encode()).hexdigest()[:16]
                    for i in range(steps)}
            _count("timing_cache_hits", len(keys & config._timing_cache._entries))
            config._timing_cache._entries |= keys
        header = {"version": __version__, "device": _DEVICE, "shapes": shapes,
                  "flags": sorted(f.name for f in config._flags),
                  "workspace": config._pools.get(MemoryPoolType.WORKSPACE),
                  "level": config._level}
        head = json.dumps(header).encode()
        _count("builds")
        return IHostMemory(_PLAN_MAGIC + len(head).to_bytes(4, "little") + head + network._onnx)


def _plan_info(plan: bytes) -> dict:
    """The header of a fake plan (tests check flags and limits the builder set)."""
    data = bytes(plan)
    n = int.from_bytes(data[len(_PLAN_MAGIC):len(_PLAN_MAGIC) + 4], "little")
    return json.loads(data[len(_PLAN_MAGIC) + 4:len(_PLAN_MAGIC) + 4 + n])


# ---- runtime -----------------------------------------------------------------------------

class Weights(_Strict):
    def __init__(self, a: np.ndarray):
        if not isinstance(a, np.ndarray):
            raise TypeError("Weights expects a numpy array")
        self._array = np.ascontiguousarray(a)

    @property
    def size(self) -> int:
        return int(self._array.size)

    @property
    def dtype(self) -> DataType:
        return {np.dtype(v): k for k, v in _NUMPY.items()}[self._array.dtype]

    @property
    def nbytes(self) -> int:
        return int(self._array.nbytes)

    def numpy(self) -> np.ndarray:
        return self._array


class ICudaEngine(_Strict):
    def __init__(self, header: dict, onnx_bytes: bytes):
        import onnx

        self._header = header
        self._model = onnx.load_from_string(onnx_bytes)
        init = {i.name for i in self._model.graph.initializer}
        self._io: list[tuple[str, TensorIOMode, DataType, tuple[int, ...]]] = []
        for vi, mode in [(v, TensorIOMode.INPUT) for v in self._model.graph.input if v.name not in init] + \
                        [(v, TensorIOMode.OUTPUT) for v in self._model.graph.output]:
            t = vi.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            self._io.append((vi.name, mode, _ONNX_TO_DTYPE[t.elem_type], dims))
        self._session = None
        self._lock = threading.Lock()
        self._logger: ILogger = Logger()

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
    def device_memory_size(self) -> int:
        # activation memory for the largest shapes of the profile: a plausible figure
        return 4096 + sum(int(np.prod(s[0][2])) * 4 for s in self._header["shapes"].values())

    def create_execution_context(self, strategy: ExecutionContextAllocationStrategy =
                                 ExecutionContextAllocationStrategy.STATIC) -> "IExecutionContext":
        _count("contexts")
        return IExecutionContext(self, ExecutionContextAllocationStrategy(strategy))

    def serialize(self) -> IHostMemory:
        head = json.dumps(self._header).encode()
        return IHostMemory(_PLAN_MAGIC + len(head).to_bytes(4, "little") + head + self._model.SerializeToString())


class Runtime(_Strict):
    def __init__(self, logger: ILogger):
        self._logger = logger

    def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        _count("deserializations")
        if not data.startswith(_PLAN_MAGIC):
            _error(self._logger, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization "
                                 "(Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
            return None
        header = _plan_info(data)
        if header["version"] != __version__ or header["device"] != _DEVICE:
            _error(self._logger, "IRuntime::deserializeCudaEngine: Error Code 6: The engine plan file is not "
                                 f"compatible with this version of TensorRT ({header['version']} on {header['device']})")
            return None
        n = int.from_bytes(data[len(_PLAN_MAGIC):len(_PLAN_MAGIC) + 4], "little")
        engine = ICudaEngine(header, data[len(_PLAN_MAGIC) + 4 + n:])
        engine._logger = self._logger
        return engine


def _host_array(address: int, shape: tuple[int, ...], dtype: DataType) -> np.ndarray:
    """A numpy view of `shape` elements at a raw address (host memory stands in for the device)."""
    np_type = np.dtype(_NUMPY[dtype])
    count = int(np.prod(shape)) if shape else 1
    buf = (ctypes.c_char * (count * np_type.itemsize)).from_address(address)
    return np.frombuffer(buf, dtype=np_type, count=count).reshape(shape)


class IExecutionContext(_Strict):
    def __init__(self, engine: ICudaEngine, strategy: ExecutionContextAllocationStrategy):
        self._engine, self._strategy = engine, strategy
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}
        self._device_memory: int | None = None

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
                    if d.dim_param:
                        if sizes.setdefault(d.dim_param, v) != v:
                            return None
        out = {}
        for vi in self._engine._model.graph.output:
            dims = []
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_value"):
                    dims.append(d.dim_value)
                elif d.dim_param in sizes:
                    dims.append(sizes[d.dim_param])
                else:
                    return None
            out[vi.name] = tuple(dims)
        return out

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
            _count("rejected_runs")
            _error(self._engine._logger, f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error "
                                         f"({problem or 'inconsistent input shapes'})")
            return False
        feeds = {}
        for name, mode, dtype, _ in self._engine._io:
            if mode == TensorIOMode.INPUT:
                feeds[name] = _host_array(self._addresses[name], self._shapes[name], dtype).copy()
        results = self._engine._run(feeds)
        for vi, value in zip(self._engine._model.graph.output, results):
            _, _, dtype, _ = self._engine._entry(vi.name)
            target = _host_array(self._addresses[vi.name], outs[vi.name], dtype)
            target[...] = value.astype(target.dtype)
        _count("runs")
        _count(f"stream:{stream_handle}")
        return True


class Refitter(_Strict):
    def __init__(self, engine: ICudaEngine, logger: ILogger):
        if not engine.refittable:
            raise TypeError("Refitter: the engine was not built with BuilderFlag.REFIT")
        self._engine, self._logger = engine, logger
        self._pending: dict[str, np.ndarray] = {}

    def _initializers(self):
        return {i.name: i for i in self._engine._model.graph.initializer}

    def get_all_weights(self) -> list[str]:
        return sorted(self._initializers())

    def get_weights_prototype(self, name: str) -> Weights:
        from onnx import numpy_helper

        init = self._initializers().get(name)
        if init is None:
            raise KeyError(name)
        return Weights(np.zeros_like(numpy_helper.to_array(init)).reshape(-1))

    def set_named_weights(self, name: str, weights: Weights) -> bool:
        from onnx import numpy_helper

        init = self._initializers().get(name)
        if init is None:
            _error(self._logger, f"IRefitter::setNamedWeights: Error Code 3: {name} is not a refittable weight")
            return False
        expected = numpy_helper.to_array(init)
        if weights.size != expected.size or weights.numpy().dtype != expected.dtype:
            _error(self._logger, f"IRefitter::setNamedWeights: Error Code 3: {name} expects {expected.size} values "
                                 f"of {expected.dtype}, got {weights.size} of {weights.numpy().dtype}")
            return False
        self._pending[name] = weights.numpy().reshape(expected.shape).copy()
        return True

    def get_missing_weights(self) -> list[str]:
        return []

    def refit_cuda_engine(self) -> bool:
        from onnx import numpy_helper

        inits = self._initializers()
        for name, value in self._pending.items():
            inits[name].CopyFrom(numpy_helper.from_array(value, name))
        with self._engine._lock:
            self._engine._session = None
        self._pending.clear()
        _count("refits")
        return True
