"""ONNX Runtime backend: runs the very ONNX that TensorRT builds from. The engine file is the graph
after ONNX Runtime's portable (basic) optimizations, so loading skips that work. Tensors are bound
in place (I/O binding), on the CPU here and with the CUDA or DirectML providers on users' machines."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.backends.base import (Availability, Backend, BuildOutcome, BuildRequest, CancelToken, Engine,
                                    ProgressFn, no_progress)
from sd_unet_trt.trt_core.profiles import Profile

ORT_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16}
NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16}
GPU_PROVIDERS = ("CUDAExecutionProvider", "DmlExecutionProvider")


class OnnxRuntimeEngine(Engine):
    def __init__(self, session, name: str, family: ModelFamily, profile: Profile, size_bytes: int):
        self.session, self.name, self.family, self.profile = session, name, family, profile
        self._size = size_bytes
        self.provider = session.get_providers()[0]
        self.device = torch.device("cuda") if self.provider == "CUDAExecutionProvider" else torch.device("cpu")
        self.input_dtypes = {i.name: ORT_DTYPES[i.type] for i in session.get_inputs()}
        output = session.get_outputs()[0]
        self.output_name, self.output_dtype = output.name, ORT_DTYPES[output.type]
        self.out_channels = output.shape[1]
        self._binding = session.io_binding()

    def _bind(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(device=self.device, dtype=self.input_dtypes[name]).contiguous()
        self._binding.bind_input(name, self.device.type, self.device.index or 0, NUMPY_TYPES[tensor.dtype],
                                 tuple(tensor.shape), tensor.data_ptr())
        return tensor

    def __call__(self, x, timesteps, context, y=None):
        held = [self._bind("x", x), self._bind("timesteps", timesteps.float()), self._bind("context", context)]
        if "y" in self.input_dtypes:
            if y is None:
                raise ValueError(f"engine {self.name} needs y")
            held.append(self._bind("y", y))
        out = torch.empty((x.shape[0], self.out_channels, x.shape[2], x.shape[3]),
                          dtype=self.output_dtype, device=self.device)
        self._binding.bind_output(self.output_name, self.device.type, self.device.index or 0,
                                  NUMPY_TYPES[out.dtype], tuple(out.shape), out.data_ptr())
        self.session.run_with_iobinding(self._binding)
        self._binding.clear_binding_inputs()
        self._binding.clear_binding_outputs()
        del held
        return out.to(device=x.device, dtype=x.dtype)

    @property
    def memory_bytes(self) -> int:
        return self._size

    def close(self) -> None:
        self.session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    file_suffix = ".ort.onnx"

    def availability(self) -> Availability:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return Availability(False, "ONNX Runtime is not installed (pip install onnxruntime, or onnxruntime-gpu)")
        return Availability(True)

    def version(self) -> str:
        import onnxruntime
        return onnxruntime.__version__

    def providers(self, device: str) -> list[str]:
        import onnxruntime
        present = onnxruntime.get_available_providers()
        gpu = [p for p in GPU_PROVIDERS if p in present] if device != "cpu" else []
        return gpu + ["CPUExecutionProvider"]

    def device_arch(self, device: str = "cuda") -> str:
        provider = self.providers(device)[0]
        if provider == "CUDAExecutionProvider" and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            return f"sm_{major}{minor}"
        return provider.replace("ExecutionProvider", "").lower()

    def build(self, request: BuildRequest, out_path: Path, progress: ProgressFn = no_progress,
              cancel: CancelToken | None = None) -> BuildOutcome:
        import onnx
        import onnxruntime

        self.require()
        model = onnx.load(str(request.onnx_path), load_external_data=False)
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer):
            raise ValueError("the ONNX Runtime backend takes models under 2 GB (one file); "
                             "use the tensorrt or torch backend for this one")
        progress("onnxruntime: optimizing the graph", 0.1)
        options = onnxruntime.SessionOptions()
        # Basic optimizations only: they are provider-independent, so the file runs anywhere.
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(out_path)
        onnxruntime.InferenceSession(str(request.onnx_path), options, providers=["CPUExecutionProvider"])
        progress("onnxruntime: done", 1.0)
        return BuildOutcome(precision=request.precision, details={"providers": self.providers(request.device)})

    def load(self, path: Path, name: str, family: ModelFamily, profile: Profile, device: str = "cuda") -> Engine:
        import onnxruntime

        self.require()
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle ORT threads would otherwise spin between calls and slow the PyTorch work around them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=self.providers(device))
        except Exception as e:  # ORT raises its own exception types for unreadable models
            raise ValueError(f"{path.name} is not a loadable ONNX Runtime engine: {e}") from None
        names = [i.name for i in session.get_inputs()]
        if names[:3] != ["x", "timesteps", "context"]:
            raise ValueError(f"{path.name} is not a UNet export of this extension (inputs {names})")
        return OnnxRuntimeEngine(session, name, family, profile, path.stat().st_size)
