"""modules/shared.py: opts (with the built-in options the extension reads), cmd_opts, sd_model, state."""
from argparse import Namespace

from modules import devices, options, shared_state

OptionInfo = options.OptionInfo
cmd_opts = Namespace(lowvram=False, medvram=False, medvram_sdxl=False, nowebui=False, api_auth=None)
opts = options.Options({
    "sd_model_checkpoint": OptionInfo(None, "Stable Diffusion checkpoint"),
    "sd_unet": OptionInfo("Automatic", "SD Unet"),
    "pad_cond_uncond": OptionInfo(False, "Pad prompt/negative prompt"),
    "batch_cond_uncond": OptionInfo(True, "Batch cond/uncond"),
    "skip_early_cond": OptionInfo(0.0, "Ignore negative prompt during early sampling"),
}, set())
sd_model = None
loaded_hypernetworks = []  # extra networks put the hypernetworks of a generation here
device = devices.device  # the real one is set from devices.device at start-up
state = shared_state.State()
