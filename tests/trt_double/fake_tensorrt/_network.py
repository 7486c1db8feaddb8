"""The network definition and the ONNX parser: parsing records the ONNX, its inputs and outputs,
one layer per node, and refuses operators the real parser has no importer for."""
from __future__ import annotations

from pathlib import Path

from tests.trt_double.fake_tensorrt._state import State, _Strict
from tests.trt_double.fake_tensorrt._types import ONNX_TO_DTYPE, DataType


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

    @property
    def is_shape_tensor(self) -> bool:
        return False


class ILayer(_Strict):
    def __init__(self, name: str):
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    @property
    def precision_is_set(self) -> bool:
        return False


class INetworkDefinition(_Strict):
    def __init__(self, flags: int):
        self._flags = flags
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._layers: list[ILayer] = []
        self._onnx: bytes | None = None

    @property
    def _strongly_typed(self) -> bool:
        from tests.trt_double import fake_tensorrt

        flag = int(fake_tensorrt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return State.flavor.strongly_typed_only or bool(self._flags & (1 << flag))

    def get_flag(self, flag) -> bool:
        return bool(self._flags & (1 << int(flag))) or (State.flavor.strongly_typed_only
                                                       and flag.name == "STRONGLY_TYPED")

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

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def get_layer(self, index: int) -> ILayer:
        return self._layers[index]

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, index: int) -> ILayer:
        if not 0 <= index < len(self._layers):
            raise IndexError(index)
        return self._layers[index]


class ParserError(_Strict):
    def __init__(self, desc: str):
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        return self._desc


def _supported_operators() -> set[str]:
    table = Path(__file__).resolve().parents[2] / "data" / "onnx_tensorrt_operators_trt10.tsv"
    rows = [line.split("\t") for line in table.read_text().splitlines() if line and not line.startswith("#")]
    return {r[0] for r in rows[1:] if r[1].startswith("Y")}


class OnnxParser(_Strict):
    def __init__(self, network: INetworkDefinition, logger):
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

    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx

        try:
            proto = onnx.load_from_string(bytes(model))
            if path is not None:
                onnx.load_external_data_for_model(proto, str(Path(path).parent))
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
            return ITensor(vi.name, dims, ONNX_TO_DTYPE[t.elem_type])

        self._network._inputs = [tensor(vi) for vi in proto.graph.input if vi.name not in initializers]
        self._network._outputs = [tensor(vi) for vi in proto.graph.output]
        self._network._layers = [ILayer(n.name or f"{n.op_type}_{i}") for i, n in enumerate(proto.graph.node)]
        self._network._onnx = proto.SerializeToString()
        return True
