"""Serving a checkpoint's engines with NVIDIA's Triton Inference Server (issue 14): the model
repository we write (repository.py), the model it runs inside Triton's Python backend (model.py),
the server's launch (server.py), and a router engine that sends calls to such a server (remote.py)."""
