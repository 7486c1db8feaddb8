"""modules/sd_models.py: CheckpointInfo (model_name, lazily computed sha256 that renames its
checkpoints_list key and adds aliases like the real calculate_shorthash), checkpoints_list,
checkpoint_aliases, model_data (with its loaded models), select_checkpoint, sending a model to the
CPU and back, and what load_model/reload_model_weights do around a model change: apply_unet("None")
first; after the load, the model_loaded callbacks, then apply_unet() only when the new checkpoint
has the loaded one's config (reload_model_weights' in-place path; load_model's does not)."""
import os

from modules import devices, hashes, lowvram, script_callbacks, sd_unet, shared

# activate_model stands in for load_model/reload_model_weights' loading from a file, which the
# double does not do: it makes a prepared model the loaded one
DOUBLE_ONLY = {"activate_model"}
checkpoints_list = {}
checkpoint_aliases = {}


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
        self.ids = [self.model_name, self.title, name, self.name_for_extra]

    def register(self):
        checkpoints_list[self.title] = self
        for id in self.ids:
            checkpoint_aliases[id] = self

    def calculate_shorthash(self):
        self.sha256 = hashes.sha256(self.filename, f"checkpoint/{self.name}")
        if self.sha256 is None:
            return
        self.shorthash = self.sha256[0:10]
        if self.shorthash not in self.ids:
            self.ids += [self.shorthash, self.sha256, f'{self.name} [{self.shorthash}]', f'{self.name_for_extra} [{self.shorthash}]']
        old_title = self.title
        self.title = f'{self.name} [{self.shorthash}]'
        if old_title in checkpoints_list:
            items = [(self.title if k == old_title else k, v) for k, v in checkpoints_list.items()]
            checkpoints_list.clear()
            checkpoints_list.update(items)
        self.register()
        return self.shorthash


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []


model_data = SdModelData()


def select_checkpoint():
    checkpoint_info = checkpoint_aliases.get(shared.opts.sd_model_checkpoint, None)
    if checkpoint_info is not None:
        return checkpoint_info
    if len(checkpoints_list) == 0:
        raise FileNotFoundError("No checkpoints found.")
    return next(iter(checkpoints_list.values()))


def send_model_to_cpu(m):
    if m is not None:
        if m.lowvram:
            lowvram.send_everything_to_cpu()
        else:
            m.to(devices.cpu)
    devices.torch_gc()


def send_model_to_device(m):
    lowvram.apply(m)
    if not m.lowvram:
        m.to(shared.device)


def activate_model(sd_model, reapply_unet=True, write_to_config=True):
    """What the extension sees of a model load: the hash is known, it becomes the selected
    checkpoint (unless, like a refiner's, it is loaded without writing to the config), callbacks
    run, options apply (unless, like load_model, the load does not apply the UNet option again)."""
    if model_data.sd_model is not None:
        sd_unet.apply_unet("None")
    sd_model.sd_checkpoint_info.calculate_shorthash()
    if write_to_config:
        shared.opts.data["sd_model_checkpoint"] = sd_model.sd_checkpoint_info.title
    model_data.sd_model = sd_model
    if sd_model not in model_data.loaded_sd_models:
        model_data.loaded_sd_models.append(sd_model)
    shared.sd_model = sd_model
    script_callbacks.model_loaded_callback(sd_model)
    if reapply_unet:
        sd_unet.apply_unet()
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    """The selected checkpoint (or `info`) made the loaded one, from the models activate_model has seen."""
    checkpoint_info = info or select_checkpoint()
    current = model_data.sd_model
    if current is not None and current.sd_checkpoint_info.filename == checkpoint_info.filename and not forced_reload:
        return current
    target = next((m for m in model_data.loaded_sd_models if m.sd_checkpoint_info.filename == checkpoint_info.filename), None)
    if target is None:
        raise FileNotFoundError(f"the double has no model for {checkpoint_info.title}")
    same_config = current is not None and getattr(current, "used_config", None) == getattr(target, "used_config", None)
    return activate_model(target, reapply_unet=same_config, write_to_config=info is None)
