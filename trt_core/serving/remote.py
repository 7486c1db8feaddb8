"""A Triton server's UNet model as an engine of our Router: the WebUI's hook and the CLI send
calls there with the same coverage rules (one record per profile the server's engines cover) and
fall back per call when the server is down, slow (a timeout, never a hang) or does not cover it.
Every calling thread has its own HTTP client (tritonclient's are not shared across threads)."""
from __future__ import annotations

import json
import threading

import numpy as np
import torch

from sd_unet_trt.models.families import ModelFamily, family_named
from sd_unet_trt.trt_core.backends.base import Engine, EngineUnavailable
from sd_unet_trt.trt_core.profiles import Profile
from sd_unet_trt.trt_core.router import EngineRecord

DEFAULT_TIMEOUT_S = 30.0


class TritonEngine(Engine):
    def __init__(self, url: str, model: str, family: ModelFamily, profile: Profile, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.url, self.model, self.timeout_s = url, model, timeout_s
        self.name, self.family, self.profile = f"triton {url}/{model}", family, profile
        self._local = threading.local()
        self._clients: list = []  # every thread's, closed with the engine (the server waits for open ones)
        self._lock = threading.Lock()

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.http as http
            client = self._local.client = http.InferenceServerClient(
                self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
            with self._lock:
                self._clients.append(client)
        return client

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()

    def __call__(self, x, timesteps, context, y=None, control=None):
        if control is not None:
            raise ValueError(f"{self.name}: ControlNet's residuals are not sent to Triton")
        import tritonclient.http as http
        from tritonclient.utils import InferenceServerException

        arrays = {"x": x, "timesteps": timesteps.reshape(-1, 1), "context": context}
        if self.family.y_dim:
            arrays["y"] = y
        inputs = []
        for name, tensor in arrays.items():
            value = np.ascontiguousarray(tensor.detach().float().cpu().numpy())
            entry = http.InferInput(name, list(value.shape), "FP32")
            entry.set_data_from_numpy(value)
            inputs.append(entry)
        try:
            result = self._client().infer(self.model, inputs, outputs=[http.InferRequestedOutput("out")])
        except InferenceServerException as e:
            raise EngineUnavailable(f"{self.name}: {e.message()}") from None
        except Exception as e:  # refused, reset, timed out: the server is not there for this call
            self._local.client = None  # a new connection next time
            raise EngineUnavailable(f"{self.name} did not answer ({type(e).__name__}: {e})") from None
        return torch.from_numpy(result.as_numpy("out").copy()).to(device=x.device, dtype=x.dtype)


def remote_records(url: str, model: str, timeout_s: float = DEFAULT_TIMEOUT_S,
                   probe_timeout_s: float | None = None) -> list[EngineRecord]:
    """The server model's profiles as router records (read from the config export-triton wrote,
    within `probe_timeout_s`, else `timeout_s`), with the digest of the weights its engines were
    built with, preferred to local engines; their calls time out after `timeout_s`."""
    import tritonclient.http as http

    probe = probe_timeout_s or timeout_s
    client = http.InferenceServerClient(url, connection_timeout=probe, network_timeout=probe)
    try:
        config = client.get_model_config(model)
    finally:
        client.close()
    params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
    family = family_named(params["family"])
    return [EngineRecord(f"triton:{url}/{model}:{i}", family, Profile.from_dict(p),
                         lambda p=p: TritonEngine(url, model, family, Profile.from_dict(p), timeout_s),
                         label=f"[triton {model}] {Profile.from_dict(p).label()}", weights=params.get("weights", ""),
                         preferred=True)
            for i, p in enumerate(json.loads(params["profiles"]))]
