"""The tab's groups of outputs, by name. Gradio takes a handler's outputs as one flat list in the
order of the components it was given; these classes build that list from named parts, so no
handler counts positions. One class holds both the components (to wire the event) and a
handler's values for them (to answer it)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import gradio as gr

from sd_unet_trt.ui.form import DIMENSIONS, FIELD_COUNT

# "Which engine?" asks about one call: (name, label, first value) of its number fields
WHICH_QUERY = (("width", "Width (px)", 512), ("height", "Height (px)", 512), ("batch", "Batch size", 1),
               ("tokens", "Prompt tokens", 75))


def keep(count: int) -> list[Any]:
    """`count` outputs left as they are."""
    return [gr.update()] * count


def cleared_messages() -> list[str]:
    """No message under any dimension of the profile editor."""
    return [""] * len(DIMENSIONS)


@dataclass(frozen=True)
class ModelOutputs:
    """What the loaded model fills: its line, the preset choice, the profile editor's fields
    (FIELD_COUNT: min, opt, max per dimension) and messages (one per dimension), the estimate,
    and "Which engine?"'s query fields (one per WHICH_QUERY entry)."""
    line: Any
    preset: Any
    fields: list[Any]
    field_messages: list[Any]
    estimate: Any
    which: list[Any]

    def flat(self) -> list[Any]:
        return [self.line, self.preset, *self.fields, *self.field_messages, self.estimate, *self.which]

    @classmethod
    def failed(cls, line: str, preset: Any = None) -> "ModelOutputs":
        """The line says what went wrong; the fields and the query keep their values."""
        return cls(line, gr.update() if preset is None else preset, keep(FIELD_COUNT), cleared_messages(), "",
                   keep(len(WHICH_QUERY)))


@dataclass(frozen=True)
class EngineOutputs:
    """The Engines tab: the table, the engine choice, the delete confirmation row and a message."""
    table: Any
    pick: Any
    confirm_row: Any
    note: Any

    def flat(self) -> list[Any]:
        return [self.table, self.pick, self.confirm_row, self.note]

    @classmethod
    def unchanged(cls) -> list[Any]:
        return keep(len(fields(cls)))
