from dataclasses import replace

import pytest
import torch

from sd_unet_trt.models import unet as arch
from sd_unet_trt.models.families import (UNET_PREFIX, UnsupportedModelError, config_from_state_dict, detect_family,
                             detect_family_of_module, family_named)


def meta_unet(config):
    with torch.device("meta"):
        return arch.UNetModel(config)


@pytest.mark.parametrize("config, prediction, name", [
    (arch.SD15, "eps", "sd1"), (replace(arch.SD15, in_channels=9), "eps", "sd1-inpaint"),
    (arch.SD2, "eps", "sd2"), (arch.SD2, "v", "sd2-v"), (replace(arch.SD2, in_channels=5), "eps", "sd2-depth"),
    (arch.SDXL, "eps", "sdxl"), (replace(arch.SDXL, in_channels=9), "eps", "sdxl-inpaint"),
    (arch.SDXL_REFINER, "eps", "sdxl-refiner"), (arch.TINY, "eps", "tiny"), (arch.TINY_XL, "eps", "tiny-xl"),
])
def test_detects_every_family_from_module_and_checkpoint(config, prediction, name):
    unet = meta_unet(config)
    assert detect_family_of_module(unet, prediction).name == name
    checkpoint = {UNET_PREFIX + k: v for k, v in unet.state_dict().items()}
    checkpoint["cond_stage_model.transformer.x"] = torch.empty(1, device="meta")
    assert detect_family(checkpoint, prediction).name == name
    assert config_from_state_dict(checkpoint) == config


def test_real_parameter_counts():
    count = lambda config: sum(p.numel() for p in meta_unet(config).parameters())
    assert count(arch.SD15) == 859_520_964  # SD1.5's published UNet
    assert count(arch.SDXL) == 2_567_463_684  # SDXL base
    assert count(arch.TINY) == 10_362_468  # shared/webui-testing/tiny.yaml: "10.4M parameters"


def test_unknown_architectures_are_refused_with_a_message():
    with pytest.raises(UnsupportedModelError, match="not supported: no SD UNet weights"):
        detect_family({"first_stage_model.encoder.conv_in.weight": torch.zeros(1)})
    odd = replace(arch.SD15, context_dim=512)
    with pytest.raises(UnsupportedModelError, match=r"closest known family is SD 1.x, and this UNet differs in "
                                                    r"context_dim 512 \(it has 768\)"):
        detect_family_of_module(meta_unet(odd))
    deeper = replace(arch.SD15, num_res_blocks=3)  # context, channels and levels all as SD 1.x: say what differs
    with pytest.raises(UnsupportedModelError, match=r"SD 1.x, and this UNet differs in num_res_blocks 3 \(it has 2\)$"):
        detect_family_of_module(meta_unet(deeper))
    with pytest.raises(UnsupportedModelError, match="unknown model family 'sd3'"):
        family_named("sd3")


def test_family_descriptors():
    xl = family_named("sdxl")
    assert xl.input_names == ("x", "timesteps", "context", "y") and xl.y_dim == 2816
    assert family_named("sdxl-refiner").y_dim == 2560 and family_named("sdxl-refiner").context_dim == 1280
    assert family_named("sd1-inpaint").is_inpaint and family_named("sd2-v").prediction == "v"


def test_tiny_unet_takes_webui_sizes_and_signature():
    unet = arch.seeded_unet(arch.TINY)
    out = unet(torch.randn(3, 4, 9, 8), torch.tensor([1.0, 500.5, 999.0]), torch.randn(3, 154, 768))
    assert out.shape == (3, 4, 9, 8)  # 72x64 px: a multiple of 8 that is not of 64
    xl = arch.seeded_unet(arch.TINY_XL)
    with pytest.raises(ValueError, match="needs y"):
        xl(torch.randn(1, 4, 8, 8), torch.tensor([1.0]), torch.randn(1, 77, 2048))
    t = torch.tensor([10.0, 10.0])
    a = unet(torch.randn(2, 4, 8, 8), t, torch.randn(2, 77, 768))
    assert not torch.allclose(a[0], a[1])  # rows are independent and depend on their inputs
