"""The Triton setting in the real WebUI v1.10.1 (CPU, offline), under --api-auth, against a real
Triton Inference Server. Prints one line per check; exits 1 if any failed.

    python tests/real_webui/check_triton_in_webui.py HARNESS_DIR [--restore-venv] [--port 7873]

The WebUI builds an ONNX Runtime engine through the API; a serving venv (HARNESS_DIR/serve-venv,
made once: torch's CPU build, this package, the WebUI's ONNX Runtime version, since engines are
checked against the version that built them, numpy < 2 for Triton's Python backend, and
nvidia-pytriton) exports the WebUI's workspace as a Triton repository (python -m sd_unet_trt
export-triton) and runs the wheel's tritonserver over it. The WebUI's venv gets tritonclient[http],
constrained so that no package the WebUI has changes.

Checks: with the setting, every step runs on the server (its statistics count the calls) and the
image is the local engine's; LoRA falls back from the server to the local engine, which takes the
LoRA's weights, and the next generation without it is the server's again; with the server killed,
the steps run on the local engine and the infotext says the server did not answer.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from check_in_webui import (MAX_DIFF, REPO, arguments, built, check, freeze, installed_extension,  # noqa: E402
                            make_data_dir, pinned_install, profile, run_checks)
from webui_client import WebUI, max_diff, trt_value  # noqa: E402

from sd_unet_trt.trt_core.serving import server  # noqa: E402
from sd_unet_trt.trt_core.serving.repository import model_name  # noqa: E402

URL_KEY = "trt_unet_triton_url"
START_SERVER = ("import sys; from pathlib import Path; from sd_unet_trt.trt_core.serving import server; "
                "p = server.start(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), "
                "Path(sys.argv[2]) / 'triton.log'); print('ready', flush=True); p.wait()")


def serving_python(harness: Path) -> Path:
    venv = harness / "serve-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        onnxruntime = freeze(harness / "venv" / "bin" / "python")["onnxruntime"]
        subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
        for args in (["torch==2.13.0+cpu"], ["-e", str(REPO), f"onnxruntime=={onnxruntime}", "numpy<2", "tritonclient[http]"],
                     ["--no-deps", "nvidia-pytriton==0.7.0"]):
            subprocess.run([str(python), "-m", "pip", "install", "-q", *args], check=True, capture_output=True)
    return python


def start_server(python: Path, repository: Path, workdir: Path, port: int) -> subprocess.Popen:
    """The server, through the serving venv's server.start, in a process group of its own."""
    process = subprocess.Popen([str(python), "-c", START_SERVER, str(repository), str(workdir), str(port),
                                str(server.free_port())], stdout=subprocess.PIPE, text=True, start_new_session=True)
    if process.stdout.readline().strip() != "ready":
        raise RuntimeError(f"the Triton server did not start; see {workdir / 'triton.log'}")
    return process


def install_client(harness: Path) -> None:
    changed, added, failure = pinned_install(harness / "venv" / "bin" / "python", ["tritonclient[http]"])
    check(not changed and not failure, f"tritonclient[http] installed into the WebUI's venv, no package changed "
                                       f"(changed: {changed or 'none'}; added: {', '.join(added)}) {failure}")


def counts(url: str, model: str) -> tuple[int, int]:
    stats = server.statistics(url, model)
    return stats["inference_count"], stats["execution_count"]


def triton_checks(webui: WebUI, data: Path, python: Path) -> None:
    local = "[onnxruntime fp32] 64-128x64-128 px"
    engine = built(webui, "onnxruntime fp32, 64-128 px", {"backend": "onnxruntime", "precision": "fp32",
                                                          "profile": profile(64, 128)})
    if not engine:
        return
    sha = engine["checkpoint"]["sha256"]
    repository, workdir = data / "triton-repo", data / "triton"
    workdir.mkdir()
    export = subprocess.run([str(python), "-m", "sd_unet_trt", "export-triton", "--dir", str(data / "models"),
                             "--checkpoint", sha[:10], "--out", str(repository), "--device", "cpu"],
                            capture_output=True, text=True)
    if not check(export.returncode == 0, f"export-triton of the WebUI's engines: {export.stdout.strip()}{export.stderr[-300:]}"):
        return
    port = server.free_port()
    process = start_server(python, repository, workdir, port)
    url, model = f"127.0.0.1:{port}", model_name(sha)
    try:
        reference, info, _ = webui.txt2img("a cat", {"sd_unet": "Automatic", URL_KEY: ""}, steps=4)
        check(local in trt_value(info), f"without the setting, the local engine: {trt_value(info)}")
        served, info, _ = webui.txt2img("a cat", {"sd_unet": "Automatic", URL_KEY: url}, steps=4)
        rows, executions = counts(url, model)
        value = trt_value(info)
        check(value.startswith(f"[triton {model}]") and "fallback" not in value and executions == 4,
              f"with the setting, every step on the server ({executions} executions, {rows} rows): {value}")
        diff = max_diff(served, reference)
        check(diff <= MAX_DIFF, f"the server's image is the local engine's: {diff}/255 apart")
        _, info, _ = webui.txt2img("<lora:tinylora:1> a cat", {"sd_unet": "Automatic", URL_KEY: url}, steps=4)
        value = trt_value(info)
        check(local in value and "LoRA applied to the engines" in value and counts(url, model)[1] == 4,
              f"a LoRA: the server cannot take its weights, the local engine does: {value}")
        again, info, _ = webui.txt2img("a cat", {"sd_unet": "Automatic", URL_KEY: url}, steps=4)
        value = trt_value(info)
        executions = counts(url, model)[1]
        check(value.startswith(f"[triton {model}]") and executions == 8 and max_diff(again, reference) <= MAX_DIFF,
              f"the LoRA off: the server again ({executions} executions in all): {value}")
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    after, info, _ = webui.txt2img("a cat", {"sd_unet": "Automatic", URL_KEY: url}, steps=4)
    value = trt_value(info)
    said = "did not answer" in value or "does not serve this checkpoint's engines" in value
    check(local in value and "fallback" not in value and said and max_diff(after, reference) <= MAX_DIFF,
          f"the server killed: the local engine, the infotext says why ({max_diff(after, reference)}/255): {value}")


def main(argv: list[str]) -> int:
    args = arguments(argv, __doc__, 7873)
    harness = args.harness
    extension = installed_extension(harness, args.restore_venv)
    install_client(harness)
    python = serving_python(harness)
    data = make_data_dir(harness)
    config = json.loads((data / "config.json").read_text())
    (data / "config.json").write_text(json.dumps({**config, URL_KEY: ""}))  # a key requests override
    return run_checks(harness, extension, data, args.port, "the extension", lambda webui: triton_checks(webui, data, python))

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
