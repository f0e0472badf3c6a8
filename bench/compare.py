"""Compare two results files: ``python -m bench.compare a.json b.json`` prints b/a for every figure.

Every numeric leaf present in both files is compared (time series and settings excluded), e.g.
``workloads.small.systems.ours.records_per_s``. Ratio > 1 means b's figure is larger.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SKIP = {"series", "settings", "machine", "stack", "top_functions", "modules", "internal", "ratios"}


def flatten(d: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            if k in SKIP:
                continue
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, list) and d and isinstance(d[0], dict) and "stage" in d[0]:
        for item in d:
            out[f"{prefix}{item['stage']}.seconds"] = float(item["seconds"])
    elif isinstance(d, int | float) and not isinstance(d, bool):
        out[prefix.rstrip(".")] = float(d)
    return out


def compare(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, float, float, float | None]]:
    fa, fb = flatten(a), flatten(b)
    rows = []
    for key in fa:
        if key in fb:
            ratio = fb[key] / fa[key] if fa[key] else None
            rows.append((key, fa[key], fb[key], ratio))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__)
    ap.add_argument("a", type=Path)
    ap.add_argument("b", type=Path)
    ap.add_argument("--grep", default="", help="only keys containing this text")
    args = ap.parse_args(argv)
    a, b = json.loads(args.a.read_text()), json.loads(args.b.read_text())
    rows = [r for r in compare(a, b) if args.grep in r[0]]
    if not rows:
        print("no figures in common", file=sys.stderr)
        return 1
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'a':>14}  {'b':>14}  {'b/a':>8}")
    for key, va, vb, ratio in rows:
        print(
            f"{key:<{width}}  {va:>14.4g}  {vb:>14.4g}  {ratio:>8.3f}"
            if ratio is not None
            else f"{key:<{width}}  {va:>14.4g}  {vb:>14.4g}  {'-':>8}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
