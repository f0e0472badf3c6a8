"""Memory soak: many rolls per partition (tiny file budgets), RSS sampled over time; it must be flat.

    python -m bench.soak                 # ~1 min: 2 partitions, 25 rolls each
    python -m bench.soak --short         # what CI runs (tests/bench/test_bench_smoke.py)

Verdict (a memory-growth check, not a timing one): after the warm-up (the first quarter of the
run), the median RSS of the second half must not exceed the median of the first half by more
than max(30 %, 20 MB).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.adapters import OursAdapter, RunContext
from bench.common import REPO, RESULTS, WORKLOADS, machine_info, stack_settings, write_json

MB = 1_000_000

PROFILES: dict[str, dict[str, int]] = {
    # records, partitions, row-group rows, file rows  → rolls per partition = records / P / file rows
    "full": {"records": 200_000, "partitions": 2, "row_group_rows": 1000, "file_rows": 4000},
    "short": {"records": 24_000, "partitions": 2, "row_group_rows": 125, "file_rows": 500},
}


def flatness(samples: list[tuple[float, int]], warmup_frac: float = 0.25) -> dict[str, Any]:
    """Compare the median RSS of the two halves of the post-warm-up samples."""
    if len(samples) < 8:
        return {"ok": False, "reason": f"too few samples ({len(samples)})"}
    t_end = samples[-1][0]
    steady = [rss for t, rss in samples if t >= t_end * warmup_frac]
    half = len(steady) // 2
    first, second = statistics.median(steady[:half]), statistics.median(steady[half:])
    allowed = max(first * 0.30, 20 * MB)
    return {
        "ok": second - first <= allowed,
        "first_half_median_mb": round(first / MB, 1),
        "second_half_median_mb": round(second / MB, 1),
        "growth_mb": round((second - first) / MB, 1),
        "allowed_growth_mb": round(allowed / MB, 1),
        "samples": len(steady),
    }


def run_soak(profile: str = "full", workload: str = "small", seed: int = 0) -> dict[str, Any]:
    from bench.run import cleanup, log, preload

    p = PROFILES[profile]
    stack = stack_settings()
    run_id = "soak-" + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:4]
    log_dir = RESULTS / "logs" / run_id
    topic = preload(stack, workload, p["records"], p["partitions"], seed)
    args = [f"--row-group-rows={p['row_group_rows']}", f"--file-rows={p['file_rows']}"]
    adapter = OursAdapter(args)
    ctx = RunContext(
        stack, run_id, workload, WORKLOADS[workload], topic, p["partitions"], p["records"], log_dir
    )
    adapter.prepare(ctx)
    log(f"soak ({profile}): {p['records']} records, {p['partitions']} partitions, {' '.join(args)}")
    res = adapter.run(ctx).wait(900)
    figures = adapter.collect(ctx, res)
    cleanup(stack, adapter.prefix(ctx))
    rolls_per_partition = figures["output"]["files"] / p["partitions"]
    verdict = flatness(figures["series"]["rss"])
    log(
        f"soak: {figures['output']['files']} files ({rolls_per_partition:.0f} rolls/partition), "
        f"peak RSS {figures['peak_rss_mb']} MB, growth {verdict.get('growth_mb')} MB → "
        f"{'flat' if verdict['ok'] else 'RISING'}"
    )
    return {
        "kind": "soak",
        "run_id": run_id,
        "profile": profile,
        "settings": {**p, "workload": workload, "args": args},
        "machine": machine_info(),
        "rolls_per_partition": rolls_per_partition,
        "verdict": verdict,
        "figures": figures,
    }


def plot_soak(result: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rss = result["figures"]["series"]["rss"]
    fig, ax = plt.subplots(figsize=(7, 3), dpi=90)
    ax.plot([t for t, _ in rss], [r / MB for _, r in rss], lw=1.2, label="RSS (process tree)")
    v = result["verdict"]
    t_end = rss[-1][0] if rss else 0
    ax.axvline(t_end * 0.25, color="grey", ls=":", lw=1, label="end of warm-up")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MB")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"Memory soak: {result['rolls_per_partition']:.0f} rolls/partition — growth {v.get('growth_mb')} MB "
        f"({'flat' if v['ok'] else 'rising'})",
        fontsize=9,
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    ap.add_argument("--short", action="store_true", help="the CI version")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    result = run_soak("short" if args.short else "full")
    out = RESULTS / f"{result['run_id']}.json"
    write_json(out, result)
    if not args.short:
        write_json(RESULTS / "soak-latest.json", result)
    if not args.no_plot:
        plot_soak(result, REPO / "docs" / "img" / ("soak_rss_short.png" if args.short else "soak_rss.png"))
    print(out)
    return 0 if result["verdict"]["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
