"""The model Triton's Python backend runs (see repository.py): each batch of requests through our
Router over the checkpoint's engines. Requests of one shape are run as one call (the dynamic
batcher's merge), each answered with its own rows; a call no engine covers is answered with an
error naming the reason, so the client falls back."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from sd_unet_trt.trt_core.catalog import router_for_checkpoint
from sd_unet_trt.trt_core.workspace import Workspace


class UNetServer:
    def __init__(self, params: dict[str, str]):
        import triton_python_backend_utils as pb_utils  # only inside Triton

        self.pb = pb_utils
        self.device = params["device"]
        self.router, _ = router_for_checkpoint(Workspace(Path(params["workspace"])), params["checkpoint"], self.device)
        self.has_y = any(r.family.y_dim for r in self.router.records)

    def _inputs(self, request) -> tuple[np.ndarray, ...]:
        names = ("x", "timesteps", "context", "y") if self.has_y else ("x", "timesteps", "context")
        return tuple(self.pb.get_input_tensor_by_name(request, n).as_numpy() for n in names)

    def execute(self, requests):
        responses: list = [None] * len(requests)
        groups: dict[tuple, list[int]] = defaultdict(list)
        arrays = []
        for i, request in enumerate(requests):
            arrays.append(self._inputs(request))
            groups[tuple(a.shape[1:] for a in arrays[-1])].append(i)
        for members in groups.values():
            merged = [torch.from_numpy(np.concatenate([arrays[i][k] for i in members])).to(self.device)
                      for k in range(len(arrays[members[0]]))]
            x, timesteps, context, *rest = merged
            result = self.router.run(x, timesteps.reshape(-1), context, rest[0] if rest else None)
            if not result.covered:
                error = self.pb.TritonError(f"not covered: {result.reason}")
                for i in members:
                    responses[i] = self.pb.InferenceResponse(output_tensors=[], error=error)
                continue
            out = result.output.float().cpu().numpy()
            start = 0
            for i in members:
                rows = arrays[i][0].shape[0]
                responses[i] = self.pb.InferenceResponse([self.pb.Tensor("out", np.ascontiguousarray(out[start:start + rows]))])
                start += rows
        return responses

    def close(self) -> None:
        self.router.close()
