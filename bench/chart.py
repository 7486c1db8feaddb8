"""Draws the precision ladder (bench/quantized_speed.py's results) as one PNG: ms per step per
model and precision, each bar labelled with its final-latent error over the denoising loop.

    python bench/chart.py DIR          (reads DIR/*-precisions.json, writes DIR/precisions.png)

Rows measured in an earlier run can be added as DIR/earlier-rows.json: {"<model>": [row, ...]},
each row with "name", "median_ms", "source" (and "replaces_this_run": why, where this run's own row
of that name is not to be shown); they are drawn hatched."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ORDER = ["eager_fp16", "fp32", "bf16", "fp16", "int8", "fp8", "int8_feed_forward", "fp8_feed_forward",
         "torchao_int8", "torchao_fp8"]
MODELS = {"sd15": "SD1.5, 512x512", "sdxl": "SDXL, 1024x1024"}


def measured_rows(folder: Path) -> dict[str, dict[str, dict]]:
    """model -> row name -> row, from every results file (a later file's row of the same name wins)."""
    rows: dict[str, dict[str, dict]] = {}
    for path in sorted(folder.glob("*-precisions.json")):
        result = json.loads(path.read_text())
        for row in result["rows"]:
            if "median_ms" in row:
                rows.setdefault(result["model"], {})[row["name"]] = row
    earlier = folder / "earlier-rows.json"
    if earlier.exists():
        for model, extra in json.loads(earlier.read_text()).items():
            for row in extra:
                if row.get("replaces_this_run") or row["name"] not in rows.get(model, {}):
                    rows.setdefault(model, {})[row["name"]] = {**row, "earlier": True}
    return rows


def draw(folder: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = measured_rows(folder)
    models = [m for m in MODELS if m in rows]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        names = [n for n in ORDER if n in rows[model]]
        ms = [rows[model][n]["median_ms"] for n in names]
        colors = ["#999999" if n == "eager_fp16" else "#4c72b0" if n in ("fp32", "bf16", "fp16") else "#dd8452"
                  for n in names]
        bars = ax.bar(range(len(names)), ms, color=colors,
                      hatch=["//" if rows[model][n].get("earlier") else "" for n in names])
        for bar, name in zip(bars, names):
            row = rows[model][name]
            loop = row.get("loop_rel_error_max")
            label = f"{row['median_ms']:.1f} ms" + (f"\nloop {loop:.1%}" if loop is not None else "")
            ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height(), label, ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
        ax.set_ylabel("ms per step (batch 2), lower is better")
        ax.set_title(f"{MODELS[model]}: torch backend via the router, H200")
        ax.set_ylim(0, max(ms) * 1.25)
    fig.suptitle("Precision ladder: speed and final-latent error vs fp32 over a 20-step loop "
                 "(random weights; hatched: earlier run)", fontsize=10)
    fig.tight_layout()
    out = folder / "precisions.png"
    fig.savefig(out, dpi=110)
    return out


if __name__ == "__main__":
    print(draw(Path(sys.argv[1])))
