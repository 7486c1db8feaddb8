"""One check of a build request (trt_core/build_check.py) for the tab, the HTTP API and the
pipeline the CLI calls: each refuses a bad request before any work, in the same words."""
from __future__ import annotations

import pytest

from sd_unet_trt.trt_core.backends import get_backend
from sd_unet_trt.trt_core.build_check import BuildChoice, build_problem
from sd_unet_trt.trt_core.pipeline import build_engine
from sd_unet_trt.trt_core.profiles import ProfileError
from sd_unet_trt.trt_core.workspace import Workspace
from sd_unet_trt.ui.form import check_fields
from sd_unet_trt.ui.standalone import tiny_source
from sd_unet_trt.ui.tab import create_tab
from tests.test_ui_messages import TINY_FIELDS, run_export

DYNAMIC = check_fields(TINY_FIELDS).profile  # 64-128 px, 1-2 images, 75-150 tokens


@pytest.mark.parametrize("choice, line", [
    (BuildChoice("nope", "fp32", DYNAMIC), "backend: unknown backend nope; the backends are "),
    (BuildChoice(["onnxruntime"], "fp32", DYNAMIC), "backend: unknown backend "),  # what a crafted request may send
    (BuildChoice("onnxruntime", "fp64", DYNAMIC), "precision: must be one of fp16, "),
    (BuildChoice("onnxruntime", {"a": 1}, DYNAMIC), "precision: must be one of fp16, "),
    (BuildChoice("onnxruntime", "int8", DYNAMIC), "precision: int8 engines are built by "),
    (BuildChoice("torch", "fp32", DYNAMIC), "profile: the torch backend builds one size per engine"),
    (BuildChoice("onnxruntime", "fp32", DYNAMIC, "yes"), "controlnet: must be true or false, got yes"),
])
def test_a_bad_request_is_one_line_naming_its_field(choice, line):
    problem = build_problem(choice)
    assert isinstance(problem, ProfileError) and str(problem).startswith(line)


def test_a_good_request_has_no_problem():
    assert build_problem(BuildChoice("onnxruntime", "fp32", DYNAMIC, True)) is None


def test_the_tab_and_the_pipeline_refuse_in_the_same_words(tmp_path):
    choice = BuildChoice("onnxruntime", "int8", DYNAMIC)
    line = str(build_problem(choice))
    steps = run_export(create_tab(tiny_source(tmp_path, "cpu")), TINY_FIELDS, backend="onnxruntime", precision="int8")
    assert len(steps) == 1 and line in steps[0][0]
    with pytest.raises(ProfileError) as refused:
        build_engine(tiny_source(tmp_path, "cpu").current_model(), DYNAMIC, get_backend("onnxruntime"),
                     Workspace(tmp_path), precision="int8")
    assert str(refused.value) == line
    assert not (tmp_path / "Unet-onnx").exists() and not (tmp_path / "Unet-trt").exists()
