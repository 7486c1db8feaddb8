"""measure.py's rows (and controlnet_speed.py's, when present) into one JSON, and a short table.

    python report.py RESULTS_DIR OUT.json > table.txt

The table: per scenario, SD Unet None against Automatic (engines): steady it/s and s/image, the
speed-up (engine it/s over None's), the first generation's wall time, peak VRAM, and the engine
image's distance from None's (max |diff| /255, PSNR); then builds, loads, profiles and failures.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def load(results: Path) -> dict:
    rows = []
    for path in sorted(results.glob("*.json")):
        rows.extend(json.loads(path.read_text()))
    extra = {p.name: json.loads(p.read_text()) for p in sorted(results.glob("controlnet_speed/*.json"))}
    return {"rows": rows, "controlnet_speed": extra}


def num(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def table(data: dict) -> list[str]:
    rows = data["rows"]
    lines = [f"{'scenario':<44} {'unet':<9} {'attn':<9} {'it/s':>7} {'s/img':>7} {'first s':>8} {'VRAM GiB':>8} "
             f"{'x None':>6} {'max|d|':>6} {'PSNR':>6}"]
    none = {(r["label"], r["scenario"]): r for r in rows if r.get("unet") == "None" and "steady" in r}
    for r in rows:
        if "steady" not in r:
            continue
        s, ref = r["steady"], none.get((r["label"], r["scenario"]))
        speedup = (s["it_s"] / ref["steady"]["it_s"] if r["unet"] != "None" and ref and s.get("it_s")
                   and ref["steady"].get("it_s") else None)
        c = r.get("correctness", {})
        vram = r.get("peak_vram_bytes")
        lines.append(f"{r['scenario'][:44]:<44} {r['unet']:<9} {r.get('attention', '?')[:9]:<9} {num(s.get('it_s')):>7} {num(s.get('s_per_image'), '.3f'):>7} "
                     f"{num(r['first'].get('wall_s')):>8} {num(vram / 2**30 if vram else None):>8} "
                     f"{num(speedup):>6} {c.get('max', '-'):>6} {num(c.get('psnr_db'), '.1f'):>6}")
    for r in rows:
        if "seconds" in r and "steady" not in r:
            lines.append(f"{r['scenario']}: {r['seconds']:.1f} s {r.get('state', '')} {r.get('error') or ''}".rstrip())
        if "hook_share_of_step" in r:
            lines.append(f"{r['scenario']}: step {r['step_ms']:.2f} ms ({r['it_s']:.2f} it/s); hook's own CPU work "
                         f"{r['hook_own_cpu_ms_per_step']:.3f} ms/step = {100 * r['hook_share_of_step']:.2f}% of a step")
        if "FAILED" in r.get("scenario", "") or ("error" in r and "seconds" not in r):
            lines.append(f"{r['scenario']}: {r.get('error')}")
    for name, result in data["controlnet_speed"].items():
        lines.append(f"controlnet_speed {name}: {json.dumps(result)[:300]}")
    return lines


def main(argv: list[str]) -> int:
    data = load(Path(argv[0]))
    Path(argv[1]).write_text(json.dumps(data, indent=1))
    print("\n".join(table(data)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
