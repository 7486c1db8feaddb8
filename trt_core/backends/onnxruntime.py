"""ONNX Runtime backend: runs the very ONNX that TensorRT builds from. The engine file is a copy of
the export (ONNX Runtime optimizes it when it loads it), so every UNet weight in it keeps its
state-dict name. Tensors are bound in place (I/O binding), on the CPU here and with the CUDA or
DirectML providers on users' machines.

Changed weights (a LoRA) get a session of their own built from the file with those initializers
replaced from memory. ONNX Runtime applies such replacements only without graph optimizations
(with them it silently keeps the file's values), so that session runs unoptimized; once every
weight is back to the file's value, the optimized session serves again.
"""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from sd_unet_trt.models.families import ModelFamily
from sd_unet_trt.trt_core.backends.base import (Availability, Backend, BuildOutcome, BuildRequest, Engine,
                                                WeightsUnsupported, arch_tag, control_inputs)
from sd_unet_trt.trt_core.export import DATA_NAME, WEIGHTS_METADATA
from sd_unet_trt.trt_core.interrupts import raise_if_interrupted
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.progress import CancelToken, ProgressFn, no_progress
from sd_unet_trt.trt_core.weights import fingerprint

ORT_DTYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16, "tensor(bfloat16)": torch.bfloat16}
NUMPY_TYPES = {torch.float32: np.float32, torch.float16: np.float16}
GPU_PROVIDERS = ("CUDAExecutionProvider", "DmlExecutionProvider")


class OnnxRuntimeEngine(Engine):
    def __init__(self, make_session, name: str, family: ModelFamily, profile: Profile, size_bytes: int):
        self._make_session = make_session  # (replacements: name -> array) -> InferenceSession
        self.name, self.family, self.profile = name, family, profile
        self._size = size_bytes
        # One I/O binding per session: two calls binding at once would run on each other's inputs and
        # leave an output unwritten. Calls, new weights and close take turns.
        self._lock = threading.Lock()
        self._replaced: dict[str, np.ndarray] = {}
        self._use(make_session({}))
        meta = self.session.get_modelmeta().custom_metadata_map.get(WEIGHTS_METADATA)
        self._weights = json.loads(meta) if meta else None  # {"shapes": ..., "fingerprints": ...}

    def _use(self, session) -> None:
        self.session = session
        self.provider = session.get_providers()[0]
        self.device = torch.device("cuda") if self.provider == "CUDAExecutionProvider" else torch.device("cpu")
        self.input_dtypes = {i.name: ORT_DTYPES[i.type] for i in session.get_inputs()}
        self.output_dtypes = {o.name: ORT_DTYPES[o.type] for o in session.get_outputs()}
        self._binding = session.io_binding()

    def _bind(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.to(device=self.device, dtype=self.input_dtypes[name]).contiguous()
        self._binding.bind_input(name, self.device.type, self.device.index or 0, NUMPY_TYPES[tensor.dtype],
                                 tuple(tensor.shape), tensor.data_ptr())
        return tensor

    def __call__(self, x, timesteps, context, y=None, control=None):
        residuals = control_inputs(self.family, x, control, self.name)
        with self._lock:
            if self.session is None:
                raise RuntimeError(f"engine {self.name} is closed")
            held = [self._bind("x", x), self._bind("timesteps", timesteps.float()), self._bind("context", context)]
            if "y" in self.input_dtypes:
                if y is None:
                    raise ValueError(f"engine {self.name} needs y")
                held.append(self._bind("y", y))
            held += [self._bind(name, value) for name, value in zip(self.family.control_names, residuals)]
            # the family's outputs (a UNet's one, a ControlNet's residuals), allocated here and written in place
            outs = [torch.empty(shape, dtype=self.output_dtypes[name], device=self.device) for name, shape in
                    zip(self.family.output_names, self.family.output_shapes(x.shape[0], x.shape[2], x.shape[3]))]
            for name, out in zip(self.family.output_names, outs):
                self._binding.bind_output(name, self.device.type, self.device.index or 0,
                                          NUMPY_TYPES[out.dtype], tuple(out.shape), out.data_ptr())
            self.session.run_with_iobinding(self._binding)
            self._binding.clear_binding_inputs()
            self._binding.clear_binding_outputs()
            del held
        outs = [out.to(device=x.device, dtype=x.dtype) for out in outs]
        return outs[0] if len(outs) == 1 else outs

    def set_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        if self._weights is None:
            raise WeightsUnsupported(f"engine {self.name} comes from an export that did not name its weights; rebuild it")
        shapes, prints = self._weights["shapes"], self._weights["fingerprints"]
        replaced = dict(self._replaced)
        dtype = self.input_dtypes["x"]
        for name, value in weights.items():
            if name not in shapes:
                raise WeightsUnsupported(f"engine {self.name} has no weight {name}")
            if list(value.shape) != shapes[name]:
                raise WeightsUnsupported(f"engine {self.name}: {name} is {shapes[name]}, the new value is {list(value.shape)}")
            if fingerprint(value) == prints[name]:
                replaced.pop(name, None)  # the file's own value
            else:
                replaced[name] = value.detach().to("cpu", dtype).contiguous().numpy()
        if replaced.keys() == self._replaced.keys() and all(np.array_equal(replaced[k], self._replaced[k]) for k in replaced):
            return
        session = self._make_session(replaced)  # calls go on meanwhile; a running call ends on the old weights
        with self._lock:
            if self.session is None:
                raise WeightsUnsupported(f"engine {self.name} is closed")
            self._replaced = replaced
            self._use(session)

    @property
    def memory_bytes(self) -> int:
        return self._size

    def close(self) -> None:
        with self._lock:
            self.session = None
            self._replaced = {}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    file_suffix = ".ort.onnx"
    build_rate = (10, 120)

    def availability(self) -> Availability:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise_if_interrupted(e)
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
            return arch_tag(torch.cuda.get_device_capability())
        return provider.replace("ExecutionProvider", "").lower()

    def build(self, request: BuildRequest, out_path: Path, progress: ProgressFn = no_progress,
              cancel: CancelToken | None = None) -> BuildOutcome:
        self.require()
        if (Path(request.onnx_path).parent / DATA_NAME).exists():
            raise ValueError("the ONNX Runtime backend takes models under 2 GB (one file); "
                             "use the tensorrt or torch backend for this one")
        progress("onnxruntime: copying the ONNX", 0.1)
        shutil.copyfile(request.onnx_path, out_path)
        progress("onnxruntime: done", 1.0)
        return BuildOutcome(precision=request.precision, details={"providers": self.providers(request.device)})

    def load(self, path: Path, name: str, family: ModelFamily, profile: Profile, device: str = "cuda") -> Engine:
        import onnxruntime

        self.require()
        providers = self.providers(device)

        def make_session(replaced: Mapping[str, np.ndarray]):
            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3  # its optimizer's notes are not the user's business
            # Idle ORT threads would otherwise spin between calls and slow the PyTorch work around them.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.graph_optimization_level = (onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL if replaced
                                                else onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL)
            values = [onnxruntime.OrtValue.ortvalue_from_numpy(array) for array in replaced.values()]
            for weight, value in zip(replaced, values):
                options.add_initializer(weight, value)
            session = onnxruntime.InferenceSession(str(path), options, providers=providers)
            session._replacements = values  # ONNX Runtime reads them for as long as the session lives
            return session

        try:
            engine = OnnxRuntimeEngine(make_session, name, family, profile, path.stat().st_size)
        except Exception as e:  # ORT raises its own exception types for unreadable models
            raise ValueError(f"{path.name} is not a loadable ONNX Runtime engine: {e}") from None
        names, outputs = list(engine.input_dtypes), list(engine.output_dtypes)
        if names[:3] != list(family.input_names[:3]) or outputs != list(family.output_names):
            raise ValueError(f"{path.name} is not a {family.label} export of this extension (inputs {names}, "
                             f"outputs {outputs})")
        return engine
