"""Memory with many partitions: peak RSS against ``--memory-bytes`` (issue 8, item 10).

``python -m bench.partitions [--partitions 200] [--records-per-partition 1000] [--schema order]
[--budgets 128MiB,512MiB]`` produces one topic with that many partitions, then runs
``consumer run --until-caught-up`` once per budget (a fresh group and prefix each) and reports
peak RSS, the budget + 100 MB bound, wall and CPU seconds, and the row groups made. Results go to
``bench/results/partitions.json`` and are printed as a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench.adapters import ensure_ours_venv
from bench.common import OURS_VENV, REPO, SampledProcess, child_env, json_lines, stack_settings, write_json

MB = 1_000_000


def parse_size(text: str) -> int:
    from consumer.config import parse_size as parse

    return parse(text)


def run(
    partitions: int, per_partition: int, schema: str, budgets: list[str], topic: str | None = None
) -> dict[str, Any]:
    from consumer.producer import produce

    stack = stack_settings()
    if topic is None:
        topic = f"bench-parts-{uuid.uuid4().hex[:8]}"
        produce(stack.bootstrap, topic, schema, partitions * per_partition, partitions=partitions)
    rows: list[dict[str, Any]] = []
    ensure_ours_venv()  # what a user runs: the runtime dependencies only (bench.run does the same)
    env = child_env(stack) | {"PYTHONPATH": str(REPO)}
    for budget in budgets:
        tag = uuid.uuid4().hex[:8]
        argv = [
            str(OURS_VENV / "bin" / "python"), "-m", "consumer", "run", "--until-caught-up",
            "--group-id", f"bench-{tag}", "--topic", topic, "--schema", schema,
            "--output", f"s3://{stack.bucket}/bench/partitions-{tag}",
            "--memory-bytes", budget, "--log-format", "json",
        ]
        proc = SampledProcess(argv, env, Path(tempfile.mkdtemp()), f"run-{tag}")
        res = proc.wait(timeout=1800)
        stopped = next((e for e in json_lines(res.stderr) if e.get("event") == "stopped"), {})
        limit = parse_size(budget) + 100 * MB
        rows.append(
            {
                "budget": budget,
                "returncode": res.returncode,
                "peak_rss_mb": round(res.peak_rss / MB, 1),
                "bound_mb": round(limit / MB, 1),
                "within_bound": res.peak_rss <= limit,
                "wall_s": round(res.wall_s, 1),
                "cpu_s": round(res.cpu_s, 1),
                "records": stopped.get("records"),
                "row_groups": stopped.get("row_groups"),
                "files": stopped.get("files"),
            }
        )
    return {"partitions": partitions, "records_per_partition": per_partition, "schema": schema, "runs": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"{result['partitions']} partitions × {result['records_per_partition']} `{result['schema']}` "
        "records, `consumer run --until-caught-up`:",
        "",
        "| --memory-bytes | peak RSS (MB) | bound: budget + 100 MB | within | row groups | files "
        "| wall s | CPU s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        lines.append(
            f"| {r['budget']} | {r['peak_rss_mb']} | {r['bound_mb']} "
            f"| {'yes' if r['within_bound'] else 'NO'} | {r['row_groups']} | {r['files']} "
            f"| {r['wall_s']} | {r['cpu_s']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--partitions", type=int, default=200)
    ap.add_argument("--records-per-partition", type=int, default=1000)
    ap.add_argument("--schema", default="order")
    ap.add_argument("--budgets", default="128MiB,512MiB")
    ap.add_argument("--topic", help="reuse a topic produced by an earlier run (same shape)")
    args = ap.parse_args(argv)
    budgets = args.budgets.split(",")
    result = run(args.partitions, args.records_per_partition, args.schema, budgets, args.topic)
    write_json(Path(__file__).parent / "results" / "partitions.json", result)
    print(markdown(result))
    print(json.dumps(result, indent=1), file=sys.stderr)
    return 0 if all(r["returncode"] == 0 for r in result["runs"]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
