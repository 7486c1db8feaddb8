"""The in-WebUI speed (report.py's results.json) as one PNG: steady it/s per scenario, SD Unet None
against Automatic (engines), each engine bar labelled with its speed-up.

    python bench/webui_gpu/chart.py RESULTS.json OUT.png [TITLE]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def pairs(rows: list[dict]) -> list[tuple[str, float, float | None]]:
    """(scenario, None's it/s, Automatic's it/s or None), in the order measured; a scenario measured
    twice keeps its last rows."""
    none, engine, order = {}, {}, []
    for row in rows:
        if "steady" not in row or not row["steady"].get("it_s"):
            continue
        name = row["scenario"]
        if name not in order:
            order.append(name)
        (none if row["unet"] == "None" else engine)[name] = row["steady"]["it_s"]
    return [(name, none[name], engine.get(name)) for name in order if name in none]


def draw(results: Path, out: Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = pairs(json.loads(results.read_text())["rows"])
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(data) + 1.5))
    ys = range(len(data))
    ax.barh([y + 0.2 for y in ys], [n for _, n, _ in data], height=0.4, label="SD Unet None (the WebUI's UNet)",
            color="#999999")
    ax.barh([y - 0.2 for y in ys], [e or 0 for _, _, e in data], height=0.4, label="Automatic (our engines)",
            color="#2a7ab9")
    for y, (_, n, e) in zip(ys, data):
        ax.text((e or 0) + 1, y - 0.2, f"{e / n:.1f}x" if e else "not measured", va="center", fontsize=8)
    ax.set_yticks(list(ys), [name for name, _, _ in data], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("sampler it/s in the WebUI (steady state; higher is better)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    draw(Path(sys.argv[1]), Path(sys.argv[2]), " ".join(sys.argv[3:]))
