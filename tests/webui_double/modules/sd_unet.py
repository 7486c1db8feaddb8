"""Double of modules/sd_unet.py (WebUI v1.10.1), written from its behaviour: the option list
filled by on_list_unets callbacks; "Automatic" picks the option whose model_name equals the
checkpoint's; applying an option deactivates the previous UNet (compared by identity), moves the
built-in UNet to the CPU and activates the new one; "None" puts the built-in UNet back on the
device unless lowvram manages it. tests/real_webui/check_double_against_webui.py checks the names
and signatures against the real file."""
import torch.nn

from modules import devices, script_callbacks, shared

unet_options = []
current_unet_option = None
current_unet = None
original_forward = None  # kept by the real module for compatibility; unused


def list_unets():
    unet_options[:] = script_callbacks.list_unets_callback()


def get_unet_option(option=None):
    wanted = option or shared.opts.sd_unet
    if wanted == "None":
        return None
    if wanted == "Automatic":
        checkpoint_name = shared.sd_model.sd_checkpoint_info.model_name
        paired = [candidate for candidate in unet_options if candidate.model_name == checkpoint_name]
        wanted = paired[0].label if paired else "None"
    return next((candidate for candidate in unet_options if candidate.label == wanted), None)


def apply_unet(option=None):
    global current_unet_option, current_unet

    chosen = get_unet_option(option)
    if chosen == current_unet_option:
        return
    if current_unet is not None:
        current_unet.deactivate()
    current_unet_option = chosen
    builtin = shared.sd_model.model.diffusion_model
    if chosen is None:
        current_unet = None
        if not shared.sd_model.lowvram:
            builtin.to(devices.device)
        return
    builtin.to(devices.cpu)
    devices.torch_gc()
    current_unet = chosen.create_unet()
    current_unet.option = chosen
    current_unet.activate()


class SdUnetOption:
    model_name = None  # the checkpoint's model_name this option pairs with under "Automatic"
    label = None  # shown in the SD Unet setting

    def create_unet(self):
        raise NotImplementedError()


class SdUnet(torch.nn.Module):
    def forward(self, x, timesteps, context, *args, **kwargs):
        raise NotImplementedError()

    def activate(self):
        pass

    def deactivate(self):
        pass


def create_unet_forward(original_forward):
    """The forward sd_hijack installs on UNetModel: the active SdUnet, else the original."""
    def UNetModel_forward(self, x, timesteps=None, context=None, *args, **kwargs):
        if current_unet is None:
            return original_forward(self, x, timesteps, context, *args, **kwargs)
        return current_unet.forward(x, timesteps, context, *args, **kwargs)

    return UNetModel_forward
