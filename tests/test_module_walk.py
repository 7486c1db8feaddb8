"""The kept walk of a UNet's modules (scripts/trt_unet_webui/module_walk.py) and the per-pass read
of its weights (live_weights.read_base) built on it: the walk is kept while the tree is unchanged and
walked again after any change of it; it dies with its UNet; the weights read are named_parameters'."""
from __future__ import annotations

import copy
import gc
import weakref

import torch

from sd_unet_trt.models import unet as arch
from sd_unet_trt.scripts.trt_unet_webui import live_weights, module_walk


def tiny():
    return arch.seeded_unet(arch.TINY, seed=1)


def listed(unet):
    return [(path, id(module)) for path, module in module_walk.walk(unet).modules]


def expected(unet):
    return [(path, id(module)) for path, module in unet.named_modules()]


def test_the_walk_is_named_modules_and_is_kept_while_nothing_changed():
    unet = tiny()
    first = module_walk.walk(unet)
    assert listed(unet) == expected(unet)
    assert module_walk.walk(unet) is first
    unet.out[2].weight.data.mul_(2)  # a weight's value is read every pass, not part of the walk
    assert module_walk.walk(unet) is first


def test_every_change_of_the_tree_is_walked_again():
    unet = tiny()
    module_walk.walk(unet)
    unet.out[2] = torch.nn.Conv2d(32, 4, 3, padding=1)  # a layer replaced
    assert listed(unet) == expected(unet)
    unet.input_blocks[1][1].extra = torch.nn.Identity()  # a layer added deep inside
    assert listed(unet) == expected(unet) and ("input_blocks.1.1.extra", id(unet.input_blocks[1][1].extra)) in listed(unet)
    del unet.input_blocks[1][1].extra  # and removed
    assert listed(unet) == expected(unet)
    unet.input_blocks[1].append(torch.nn.Identity())  # a list grown
    assert listed(unet) == expected(unet)
    unet.middle_block._modules["0"], unet.middle_block._modules["2"] = \
        unet.middle_block._modules["2"], unet.middle_block._modules["0"]  # same children, other places
    assert listed(unet) == expected(unet)


def test_a_copy_of_the_unet_walks_its_own_modules():
    unet = tiny()
    module_walk.walk(unet)
    twin = copy.deepcopy(unet)  # its kept walk is copied with it
    assert listed(twin) == expected(twin) and listed(twin) != listed(unet)


def test_the_walk_dies_with_its_unet():
    """Kept anywhere but on the UNet, it would hold the UNet's layers and weights after the WebUI
    dropped the model."""
    unet = tiny()
    module_walk.walk(unet)
    layer = weakref.ref(unet.out[2])
    del unet
    gc.collect()
    assert layer() is None


def test_the_weights_read_are_named_parameters_with_a_shared_weight_once():
    unet = tiny()
    unet.out[2].twin = unet.out[2].weight  # one Parameter under two names of one module
    unet.out[2].register_parameter("nothing", None)
    unet.extra = torch.nn.Module()  # two names, one Parameter: the common count of two, checked apart
    unet.extra.weight = torch.nn.Parameter(torch.ones(2))
    unet.extra.alias = unet.extra.weight
    live = live_weights.LiveUNet()
    live_weights.read_base(module_walk.walk(unet), False, False, live)
    named = dict(unet.named_parameters())
    assert list(live.base) == list(named) and all(live.base[k] is v for k, v in named.items())
    assert "out.2.twin" not in live.base and "extra.alias" not in live.base and "extra.weight" in live.base
