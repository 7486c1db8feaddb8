"""modules/sd_hijack.py (v1.10.1), lines 41-45: at import, the ldm and sgm UNetModel.forward are
replaced by sd_unet.create_unet_forward(...) (every call goes to sd_unet.current_unet when one is
set) and the unpatched ones stay reachable as ldm_original_forward / sgm_original_forward.

The ldm/sgm classes are stand-ins built on models.unet.UNetModel (same state-dict layout) with the
ldm/sgm forward signature `forward(self, x, timesteps=None, context=None, y=None, **kwargs)` and
the ldm/sgm module names, which the extension uses to pick the original forward.
"""
from sd_unet_trt.models.unet import UNetModel as _OurUNet
from modules import sd_hijack_unet, sd_unet  # noqa: F401 (imported here as the real sd_hijack imports it)

# stand-ins for ldm/sgm's UNetModel and the CLIP tokenizer (not modules of the WebUI)
DOUBLE_ONLY = {"LdmUNetModel", "SgmUNetModel", "token_count"}


def _forward(self, x, timesteps=None, context=None, y=None, **kwargs):
    return _OurUNet.forward(self, x, timesteps, context, y)


def _model_channels(self) -> int:  # an attribute of ldm's and sgm's UNetModel
    return self.config.model_channels


class LdmUNetModel(_OurUNet):
    forward = _forward
    model_channels = property(_model_channels)


class SgmUNetModel(_OurUNet):
    forward = _forward
    model_channels = property(_model_channels)


LdmUNetModel.__module__ = "ldm.modules.diffusionmodules.openaimodel"
SgmUNetModel.__module__ = "sgm.modules.diffusionmodules.openaimodel"

ldm_patched_forward = sd_unet.create_unet_forward(LdmUNetModel.forward)
ldm_original_forward = LdmUNetModel.forward
LdmUNetModel.forward = ldm_patched_forward

sgm_patched_forward = sd_unet.create_unet_forward(SgmUNetModel.forward)
sgm_original_forward = SgmUNetModel.forward
SgmUNetModel.forward = sgm_patched_forward


def token_count(text: str) -> int:
    """The double's tokenizer: one token per whitespace-separated word."""
    return len(text.split())


class StableDiffusionModelHijack:
    def get_prompt_lengths(self, text):
        count = token_count(text)
        return count, max(75, -(-count // 75) * 75)


model_hijack = StableDiffusionModelHijack()
