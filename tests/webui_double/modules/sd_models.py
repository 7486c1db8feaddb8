"""modules/sd_models.py: CheckpointInfo (model_name, lazily computed sha256 that renames its
checkpoints_list key like the real calculate_shorthash), checkpoints_list, model_data, and what
load_model/reload_model_weights do around a model change (apply_unet("None") first)."""
import os

from modules import hashes, script_callbacks, sd_unet

# activate_model stands in for load_model/reload_model_weights, whose loading from a file the double does not do
DOUBLE_ONLY = {"activate_model"}
checkpoints_list = {}


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        name = os.path.basename(filename)
        self.name = name
        self.name_for_extra = os.path.splitext(name)[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.sha256 = None  # the WebUI fills it from its hash cache, or on calculate_shorthash()
        self.shorthash = None
        self.title = name

    def register(self):
        checkpoints_list[self.title] = self

    def calculate_shorthash(self):
        self.sha256 = hashes.sha256(self.filename, f"checkpoint/{self.name}")
        if self.sha256 is None:
            return
        self.shorthash = self.sha256[0:10]
        old_title = self.title
        self.title = f'{self.name} [{self.shorthash}]'
        if old_title in checkpoints_list:
            items = [(self.title if k == old_title else k, v) for k, v in checkpoints_list.items()]
            checkpoints_list.clear()
            checkpoints_list.update(items)
        return self.shorthash


class SdModelData:
    def __init__(self):
        self.sd_model = None


model_data = SdModelData()


def activate_model(sd_model):
    """What the extension sees of a model load: the hash is known, callbacks run, options apply."""
    from modules import shared
    if model_data.sd_model is not None:
        sd_unet.apply_unet("None")
    sd_model.sd_checkpoint_info.calculate_shorthash()
    model_data.sd_model = sd_model
    shared.sd_model = sd_model
    script_callbacks.model_loaded_callback(sd_model)
    sd_unet.apply_unet()
    return sd_model
