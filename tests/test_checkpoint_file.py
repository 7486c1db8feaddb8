"""A pickled checkpoint is read with torch's weights-only unpickler. One that holds code is
refused in plain words: it holds code and is not loaded. Torch's own message advises re-running
with weights_only=False, the one thing a user must not do with such a file (issue 21)."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from sd_unet_trt.trt_core.checkpoint_file import CheckpointError, read_unet_tensors

UNET_KEY = "model.diffusion_model.out.2.bias"


class RunsACommand:
    """What a hostile checkpoint carries: unpickling it calls os.system."""

    def __reduce__(self):
        return os.system, ("echo this ran",)


def refusal(path) -> str:
    with pytest.raises(CheckpointError) as refused:
        read_unet_tensors(path)
    return str(refused.value)


@pytest.mark.parametrize("save", [
    lambda path, state: torch.save(state, path),  # the zip format of torch.save
    lambda path, state: path.write_bytes(pickle.dumps(state, protocol=2)),  # an old plain pickle
], ids=["torch-zip", "plain-pickle"])
def test_a_checkpoint_holding_code_is_refused_in_plain_words(tmp_path, save):
    path = tmp_path / "model.ckpt"
    save(path, {"state_dict": {UNET_KEY: torch.zeros(4)}, "callback": RunsACommand()})
    line = refusal(path)
    assert line.startswith("model.ckpt holds code") and "not loaded" in line, line
    assert "weights_only" not in line and "False" not in line and "\n" not in line, line


def test_a_damaged_pickle_is_still_called_unreadable(tmp_path):
    path = tmp_path / "model.ckpt"
    path.write_bytes(b"\x80\x02not a pickle at all")
    line = refusal(path)
    assert "is not a readable checkpoint" in line and "weights_only" not in line, line


def test_a_checkpoint_of_plain_weights_still_loads(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {UNET_KEY: torch.ones(4)}}, path)
    assert torch.equal(read_unet_tensors(path)["out.2.bias"], torch.ones(4))
