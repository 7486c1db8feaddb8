"""The WebUI double against the real WebUI v1.10.1 source (tests/real_webui/check_double_against_webui.py).

CI cannot fetch the WebUI (the upstream repository is too large to fetch there and it is not a
package), so the check against it runs only where WEBUI_DIR points at a v1.10.1 checkout
(here: WEBUI_DIR=/work/webui) and is skipped otherwise. The checker's own rules are tested on
small sources everywhere."""
from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from tests.real_webui.check_double_against_webui import check, compare_module, double_option_names, real_option_names

WEBUI_DIR = os.environ.get("WEBUI_DIR")


@pytest.mark.skipif(not WEBUI_DIR, reason="needs WEBUI_DIR (a WebUI v1.10.1 checkout)")
def test_double_matches_the_real_webui():
    problems = check(Path(WEBUI_DIR))
    assert not problems, "\n".join(problems)


def mismatches(double: str, real: str) -> list[str]:
    return compare_module("m", ast.parse(double), ast.parse(real))


REAL = """
x = 1
def f(a, b=1, *args, key=None, **kwargs): pass
class C(Base):
    attr = None
    def __init__(self, p):
        self.field = p
    def g(self, q, r=2): pass
    alias = g
"""


@pytest.mark.parametrize("double", [
    "x = 2",
    "def f(a, b=1): pass",
    "def f(a): pass",
    "def f(a, b=1, *args, key=None, **kwargs): pass",
    "class C:\n    attr = None\n    field = 0\n    def g(self, q): pass\n    def alias(self, q, r=2): pass",
])
def test_what_the_real_module_has_passes(double):
    assert mismatches(double, REAL) == []


@pytest.mark.parametrize("double,expected", [
    ("y = 2", "m.y: module attribute not in the real module"),
    ("def h(): pass", "m.h: not in the real module"),
    ("def f(b, a=1): pass", "positional parameters (b, a) are not the real (a, b)"),
    ("def f(a, b=2): pass", "default of 'b' is 2, the real one is 1"),
    ("def f(a=0): pass", "gives 'a' a default (0); the real one has none"),
    ("def f(a, b=1, c=3): pass", "positional parameters (a, b, c) are not the real (a, b)"),
    ("class C:\n    def g(self): pass", "leaves out real parameters without defaults: q"),
    ("class C:\n    other = 1", "m.C.other: not in the real class"),
    ("class C:\n    attr = 1", "m.C.attr: default 1, the real one is None"),
    ("class D: pass", "m.D: class not in the real module"),
    ('DOUBLE_ONLY = {"x"}', "m.x: declared DOUBLE_ONLY but the real module has it"),
])
def test_what_the_real_module_lacks_is_reported(double, expected):
    found = mismatches(double, REAL)
    assert any(expected in problem for problem in found), found


def test_declared_double_only_names_are_skipped():
    assert mismatches('DOUBLE_ONLY = {"helper", "C.knob"}\ndef helper(): pass\nclass C:\n    knob = 1', REAL) == []


def test_option_names_are_read_from_both_sides():
    double = ast.parse('opts = options.Options({"sd_unet": OptionInfo("Automatic"), "made_up": OptionInfo(1)}, set())')
    real = ast.parse('options_templates.update(options_section(("sd", "SD"), {"sd_unet": OptionInfo("Automatic")}))')
    assert double_option_names(double) == ["sd_unet", "made_up"]
    assert real_option_names(real) == {"sd_unet"}
