"""modules/sd_hijack_unet.py (v1.10.1), lines 10-36: `th`, the torch stand-in whose `cat` ldm's and
sgm's openaimodel call to join the skip connections (the WebUI sets openaimodel.th to it when it
applies its optimizations). FreeU replaces `th.cat` on this object. The double's UNet stand-ins
call models.unet's forward, which uses torch.cat directly, so a replaced th.cat does not change the
double's images; the tests check what the extension decides about it."""
import torch


class TorchHijackForUnet:
    """
    This is torch, but with cat that resizes tensors to appropriate dimensions if they do not match;
    this makes it possible to create pictures with dimensions that are multiples of 8 rather than 64
    """

    def __getattr__(self, item):
        if item == 'cat':
            return self.cat

        if hasattr(torch, item):
            return getattr(torch, item)

        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

    def cat(self, tensors, *args, **kwargs):
        if len(tensors) == 2:
            a, b = tensors
            if a.shape[-2:] != b.shape[-2:]:
                a = torch.nn.functional.interpolate(a, b.shape[-2:], mode="nearest")

            tensors = (a, b)

        return torch.cat(tensors, *args, **kwargs)


th = TorchHijackForUnet()
