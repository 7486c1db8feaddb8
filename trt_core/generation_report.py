"""What ran for one generation's UNet calls, pass by pass (first pass, hires pass, refiner): which
engine served them or why the built-in UNet did, and notes such as a LoRA applied to the engines.
Its text is the infotext value, so every image and every API response says what made it."""
from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

FIRST_PASS = "first pass"


def pass_label(hires: bool, refiner: str | None) -> str:
    parts = (["hires pass"] if hires else []) + ([f"refiner {refiner}"] if refiner else [])
    return ", ".join(parts) or FIRST_PASS


@dataclass
class PassReport:
    engine_calls: Counter = field(default_factory=Counter)
    fallbacks: OrderedDict = field(default_factory=OrderedDict)  # reason -> calls
    builtin_steps: OrderedDict = field(default_factory=OrderedDict)  # reason -> steps no engine UNet saw

    @property
    def calls(self) -> int:
        return sum(self.engine_calls.values()) + sum(self.fallbacks.values())

    def text(self) -> str:
        """"<engine>" when engines served every call, "fallback: <reason>" when none did, both
        with counts when the pass mixed them."""
        mixed = len(self.engine_calls) + len(self.fallbacks) + len(self.builtin_steps) > 1
        parts = [f"{label} ({n} calls)" if mixed else label for label, n in self.engine_calls.items()]
        parts += [f"fallback: {reason} ({n} calls)" if mixed else f"fallback: {reason}"
                  for reason, n in self.fallbacks.items()]
        parts += [f"built-in UNet: {reason} ({n} steps)" if mixed else f"built-in UNet: {reason}"
                  for reason, n in self.builtin_steps.items()]
        return ", ".join(parts)


class GenerationReport:
    def __init__(self) -> None:
        self.passes: OrderedDict[str, PassReport] = OrderedDict()
        self.current = FIRST_PASS
        self.notes: list[str] = []
        self._reasons: set[str] = set()
        self.engine_unet_seen = False  # an engine UNet took part: steps without one are worth reporting

    def start_pass(self, label: str) -> None:
        self.current = label

    def _pass(self) -> PassReport:
        return self.passes.setdefault(self.current, PassReport())

    def record_engine(self, label: str) -> None:
        self.engine_unet_seen = True
        self._pass().engine_calls[label] += 1

    def record_fallback(self, reason: str) -> bool:
        """Count a fallback call; True the first time this generation meets this reason (warn once)."""
        self.engine_unet_seen = True
        calls = self._pass().fallbacks
        calls[reason] = calls.get(reason, 0) + 1
        first = reason not in self._reasons
        self._reasons.add(reason)
        return first

    def record_builtin_step(self, reason: str) -> None:
        """A sampling step on the built-in UNet with no engine UNet active (a refiner without engines)."""
        if self.engine_unet_seen:
            steps = self._pass().builtin_steps
            steps[reason] = steps.get(reason, 0) + 1

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @property
    def calls(self) -> int:
        return sum(p.calls for p in self.passes.values())

    def infotext(self) -> str | None:
        """The value of the "TensorRT" infotext key; None before any UNet call went through an engine UNet."""
        passes = [(label, report) for label, report in self.passes.items() if report.text()]
        if not self.calls:
            return None
        if len(passes) == 1 and passes[0][0] == FIRST_PASS:
            text = passes[0][1].text()
        else:
            text = "; ".join(f"{label}: {report.text()}" for label, report in passes)
        return "; ".join([text, *self.notes])
