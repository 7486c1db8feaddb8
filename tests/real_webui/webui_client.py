"""A small client for a running WebUI (standard library only): its API with basic auth, images as
arrays, our build routes, and the largest pixel difference between two generations."""
from __future__ import annotations

import base64
import io
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class WebUI:
    url: str
    auth: tuple[str, str] | None = None

    def request(self, method: str, path: str, body: dict | None = None, auth: bool = True, timeout: float = 900):
        """(status, JSON answer or text)."""
        headers = {"Content-Type": "application/json"}
        if auth and self.auth:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.auth).encode()).decode()
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as answer:
                status, raw = answer.status, answer.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")

    def txt2img(self, prompt: str, settings: dict | None = None, **fields) -> tuple[np.ndarray, str, dict]:
        """(image as int16 RGB array, its infotext, the API's info)."""
        images, infotext, info = self.txt2img_all(prompt, settings, **fields)
        return images[0], infotext, info

    def txt2img_all(self, prompt: str, settings: dict | None = None, **fields) -> tuple[list[np.ndarray], str, dict]:
        """(every image of the batch as int16 RGB arrays, the first one's infotext, the API's info)."""
        body = {"prompt": prompt, "negative_prompt": "", "width": 64, "height": 64, "steps": 4, "sampler_name": "Euler",
                "seed": 1, "cfg_scale": 7, "batch_size": 1, "override_settings": settings or {},
                "override_settings_restore_afterwards": True, **fields}
        status, answer = self.request("POST", "/sdapi/v1/txt2img", body)
        if status != 200:
            raise RuntimeError(f"txt2img answered {status}: {answer}")
        images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")).astype(np.int16)
                  for encoded in answer["images"]]
        info = json.loads(answer["info"])
        return images, info["infotexts"][0], info

    def build(self, body: dict, timeout: float = 1800, route: str = "/trt-unet/v1/builds") -> dict:
        """Start a build (of a ControlNet model with route /trt-unet/v1/controlnet-builds) and wait
        for it; the final job status."""
        status, answer = self.request("POST", route, body)
        if status != 202:
            raise RuntimeError(f"build answered {status}: {answer}")
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, job = self.request("GET", f"/trt-unet/v1/builds/{answer['job_id']}")
            if job["state"] != "running":
                return job
            time.sleep(1)
        raise TimeoutError(f"build {answer['job_id']} still running after {timeout} s")


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a - b).max())


def trt_value(infotext: str) -> str:
    """The TensorRT entry of an infotext ("" when it has none)."""
    for part in split_infotext(infotext):
        if part.startswith("TensorRT: "):
            return part[len("TensorRT: "):].strip('"')
    return ""


def split_infotext(infotext: str) -> list[str]:
    """The infotext's last line, split into its key: value entries (quoted values kept whole)."""
    line, parts, current, quoted = infotext.splitlines()[-1], [], "", False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return parts + [current.strip()]
