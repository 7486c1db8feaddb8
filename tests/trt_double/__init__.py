"""A strict stand-in for the `tensorrt` module (TensorRT 10 Python API), used only by tests: see fake_tensorrt."""
