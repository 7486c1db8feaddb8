"""A backend compiled by PyTorch itself: torch.export + Inductor, replayed as CUDA graphs.

`build` exports the UNet at the profile's one size and compiles the exported graph ahead of time
with Inductor's standalone compile, whose artifact holds the generated kernels already compiled.
The engine file is one zip: the artifact, the weights in the requested precision (passed to the
compiled graph as inputs, so `set_weights` changes them in place; one raw blob, stored uncompressed so `load` reads it straight from the
file onto the device in large chunks) and a record of what was built. `load` reads it
back in seconds without compiling. On a GPU the engine captures one CUDA graph per exact call
shape, so a step costs one graph launch instead of hundreds of kernel launches from Python.

Build options (BuildRequest.options): `channels_last` (default on), `attention` (the SDPA kernels
the compile may pick, in priority order; default: torch's own choice), `fuse_projections` (one
GEMM for an attention's q/k/v, default on: SD1.5 -3%, SDXL -1.7% per step, bench/NOTES.md), `inductor` (Inductor settings). The record keeps which
SDPA kernel each attention call was compiled to.

Convolution weights are compiled and stored channels-last (NHWC). Inductor runs the convolutions
channels-last anyway; given NCHW weights as graph inputs it would copy every one of them into
NHWC on every step (SD1.5: 1.2 GB of weights, ~2.4 GB of memory traffic per step). Inputs and
outputs stay ordinary contiguous tensors.

Each weight starts on a 256-byte boundary of the blob. Inductor clones every input whose address
is not 16-byte aligned on every call; tightly packed weights (safetensors' layout) cost SDXL 3 ms
of device-to-device copies per step and 3 GB of memory (bench/NOTES.md).

Why not AOTInductor's `.pt2` packages: on the project's GPU machine (torch 2.11, CUDA 13) loading
any AOTInductor package crashed the process (bench/aoti_probe.py, bench/NOTES.md).

The file is tied to the torch version and GPU architecture it was built with (the manifest
records both; `load` refuses a mismatch with a message that says to rebuild).
"""
from sd_unet_trt.trt_core.backends.torch_compiled.backend import TorchCompiledBackend  # noqa: E402,F401
