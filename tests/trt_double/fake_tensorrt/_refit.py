"""Host weights and the refitter: new values for an engine's named weights (its ONNX initializers)."""
from __future__ import annotations

import numpy as np

from tests.trt_double.fake_tensorrt._runtime import ICudaEngine
from tests.trt_double.fake_tensorrt._state import _Strict, count
from tests.trt_double.fake_tensorrt._types import NUMPY, DataType, ILogger, error


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
        return {np.dtype(v): k for k, v in NUMPY.items()}[self._array.dtype]

    @property
    def nbytes(self) -> int:
        return int(self._array.nbytes)

    def numpy(self) -> np.ndarray:
        return self._array


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

    def get_weights_prototype(self, weights_name: str) -> Weights:
        from onnx import numpy_helper

        init = self._initializers().get(weights_name)
        if init is None:
            raise KeyError(weights_name)
        return Weights(np.zeros_like(numpy_helper.to_array(init)).reshape(-1))

    def set_named_weights(self, name: str, weights: Weights) -> bool:
        from onnx import numpy_helper

        init = self._initializers().get(name)
        if init is None:
            error(self._logger, f"IRefitter::setNamedWeights: Error Code 3: {name} is not a refittable weight")
            return False
        expected = numpy_helper.to_array(init)
        if weights.size != expected.size or weights.numpy().dtype != expected.dtype:
            error(self._logger, f"IRefitter::setNamedWeights: Error Code 3: {name} expects {expected.size} values "
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
        count("refits")
        return True

