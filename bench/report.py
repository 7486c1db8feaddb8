"""Turn bench/unet_speed.py results into docs/BENCHMARKS.md's tables.

    python bench/report.py bench/results/<run>/sd15.json bench/results/<run>/sdxl.json > table.md
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# The issue's targets, per model: ms per step through the router.
TARGET_MS = {"sd15": 6.0, "sdxl": 30.0}
ROUTER_OVERHEAD_MAX, REL_ERR_MAX, BUILD_MAX_S, LOAD_MAX_S = 0.03, 1e-2, 180.0, 10.0


def fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def speedup(row: dict[str, Any]) -> str:
    return "—" if row.get("speedup") is None else f"{row['speedup']:.2f}×"


def table(result: dict[str, Any]) -> str:
    env = result["env"]
    lines = [f"### {result['workload']}, batch {result['rows_per_step']} (one image with CFG), {result['precision']}",
             "",
             f"{env.get('gpu', env.get('cpu'))}, driver {env.get('driver', '—')}, torch {env['torch']}, "
             f"CUDA {env.get('cuda', '—')}, cuDNN {env.get('cudnn', '—')}, triton {env.get('triton', '—')}; "
             f"{env['date']}. {result['parameters'] / 1e6:.2f} M parameters, "
             f"{result['flops'] / 1e12:.3f} TFLOP per step; measured fp16 GEMM ceiling "
             f"{fmt(result.get('matmul_ceiling_tflops'), '.0f')} TFLOP/s.",
             "",
             "| row | ms/step (median) | p10–p90 | TFLOP/s | vs eager | build s | load s | VRAM MiB | rel err vs fp32 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in result["rows"]:
        label = f"{row.get('label', row['name'])} (`{row['name']}`)"
        if "median_ms" not in row:
            why = row.get("failed") or row.get("skipped", "")
            lines.append(f"| {label} | not timed: {why[:200]} | | | | | | | {fmt(row.get('rel_err'), '.1e')} |")
            continue
        lines.append(
            f"| {label} | {row['median_ms']:.2f} | {row['p10_ms']:.2f}–{row['p90_ms']:.2f} | {row['tflops']:.0f} | "
            f"{speedup(row)} | {fmt(row.get('build_s'), '.0f')} | {fmt(row.get('load_s'), '.1f')} | "
            f"{fmt(row.get('vram_mib'), '.0f')} | {row['rel_err']:.1e} |")
    return "\n".join(lines)


def targets(result: dict[str, Any]) -> str:
    rows = {r["name"]: r for r in result["rows"]}
    router = next((r for n, r in rows.items() if n.startswith("router[") and "median_ms" in r), None)
    engine = rows.get(router["name"].replace("router", "torch")) if router else None
    goal = TARGET_MS.get(result["model"])
    checks = []
    if router and goal:
        checks.append((f"≤ {goal} ms per step through the router", f"{router['median_ms']:.2f} ms",
                       router["median_ms"] <= goal))
    if router:
        checks.append((f"router adds ≤ {ROUTER_OVERHEAD_MAX:.0%}", f"{router['router_overhead']:+.1%}",
                       router["router_overhead"] <= ROUTER_OVERHEAD_MAX))
    if engine:
        checks.append((f"rel err ≤ {REL_ERR_MAX}", f"{engine['rel_err']:.1e}", engine["rel_err"] <= REL_ERR_MAX))
        checks.append((f"build ≤ {BUILD_MAX_S:.0f} s", f"{engine['build_s']:.0f} s", engine["build_s"] <= BUILD_MAX_S))
        checks.append((f"load < {LOAD_MAX_S:.0f} s", f"{engine['load_s']:.1f} s", engine["load_s"] < LOAD_MAX_S))
    if not checks:
        return "No backend row was timed, so no target can be judged."
    return "\n".join(["| target | measured | met |", "|---|---:|---|"] +
                     [f"| {name} | {value} | {'yes' if ok else '**no**'} |" for name, value, ok in checks])


def breakdown(result: dict[str, Any]) -> str:
    rows = [r for r in result["rows"] if "breakdown" in r]
    if not rows:
        return ""
    b = rows[0]["breakdown"]
    lines = [f"Kernel time of one `{rows[0]['name']}` step without CUDA graphs (torch.profiler): "
             f"{b['total_ms']:.2f} ms in {b['kernel_count']} distinct kernels.", "",
             "| kernel class | ms | share |", "|---|---:|---:|"]
    lines += [f"| {name} | {ms:.2f} | {ms / b['total_ms']:.0%} |" for name, ms in b["by_class_ms"].items()]
    lines += ["", "Top kernels:", "", "| kernel | ms |", "|---|---:|"]
    lines += [f"| `{name[:90]}` | {ms:.3f} |" for name, ms in b["top_kernels_ms"][:12]]
    return "\n".join(lines)


def main() -> None:
    for path in sys.argv[1:]:
        result = json.loads(Path(path).read_text())
        print(table(result), "", targets(result), "", breakdown(result), "", sep="\n")


if __name__ == "__main__":
    main()
