"""The TensorRT backend (TensorRT 10, I/O-tensor API only). `tensorrt` is imported lazily, so this
package imports on machines without it and says why it is unavailable."""
from sd_unet_trt.trt_core.backends.tensorrt.backend import TensorRTBackend

__all__ = ["TensorRTBackend"]
