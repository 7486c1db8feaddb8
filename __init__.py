"""sd_unet_trt: the extension's one import name. Its folders (models/, trt_core/, ui/, scripts/) are
subpackages of it, so none of them can hide another package's module of the same name. The WebUI
loads it by path (scripts/trt_unet.py); standalone, `pip install` maps it to this folder."""
