"""modules/devices.py (v1.10.1): the names the extension uses. `--use-cpu all --no-half` values."""
import torch

cpu: torch.device = torch.device("cpu")
device: torch.device = torch.device("cpu")
dtype: torch.dtype = torch.float32
dtype_unet: torch.dtype = torch.float32


def torch_gc():
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
