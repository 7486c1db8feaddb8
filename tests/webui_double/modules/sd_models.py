"""modules/sd_models.py: CheckpointInfo (model_name, lazily computed sha256), checkpoints_list,
model_data, and reload_model_weights's order on a checkpoint change (apply_unet("None") first)."""
import hashlib
import os

from modules import script_callbacks, sd_unet

checkpoints_list = {}


class CheckpointInfo:
    def __init__(self, filename, sha256_value=None):
        self.filename = filename
        name = os.path.basename(filename)
        self.name = name
        self.name_for_extra = os.path.splitext(name)[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self._sha256 = sha256_value
        self.sha256 = None  # the WebUI fills it from its hash cache, or on calculate_shorthash()
        self.shorthash = None
        self.title = name

    def calculate_shorthash(self):
        self.sha256 = self._sha256 or hashlib.sha256(self.filename.encode()).hexdigest()
        self.shorthash = self.sha256[0:10]
        self.title = f'{self.name} [{self.shorthash}]'
        return self.shorthash

    def register(self):
        checkpoints_list[self.title] = self


class ModelData:
    def __init__(self):
        self.sd_model = None


model_data = ModelData()


def load_model(sd_model):
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
