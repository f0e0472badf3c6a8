"""How long an assignment of many partitions takes to recover, as S3's round trip grows.

``python -m bench.recovery [--partitions 200] [--records-per-partition 100] [--rtt-ms 0,25]
[--threads 1,8]`` produces one topic, runs ``consumer run --until-caught-up`` once so that every
partition has a committed offset and a final file, then runs it again with the same group and
prefix for each S3 round-trip time and each recovery concurrency. Nothing is left to read, so a
rerun is its recoveries: the report gives the seconds from start to "partitions assigned", the
recoveries' own milliseconds and the S3 requests. ``--threads 1`` is the one-after-another
recovery that ran before ``consumer.side_by_side.recover_all``.

The round trip is made by a proxy in front of the local S3 server (:class:`bench.slow_s3.DelayProxy`)
that holds every chunk rtt/2 in each direction, as a farther server would; Kafka is not delayed.
Results go to ``bench/results/recovery.json`` and are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from bench.adapters import ensure_ours_venv
from bench.common import RESULTS, stack_settings, write_json
from bench.slow_s3 import (
    add_arguments,
    endpoints,
    event_time,
    ours_cmd,
    print_table,
    produce_topic,
    run_to_end,
)


def _run(stack: Any, topic: str, group: str, prefix: str, s3_endpoint: str, threads: int) -> dict[str, Any]:
    cmd = ours_cmd("RECOVERY_THREADS", threads, stack, topic, group, prefix, s3_endpoint, "--until-caught-up")
    t0 = time.monotonic()
    events = run_to_end(cmd, stack)
    wall = time.monotonic() - t0
    start = event_time(events[0])
    assigned = next(e for e in events if e.get("event") == "partitions assigned")
    recovered = [e["ms"] for e in events if e.get("event") == "partition recovered"]
    stopped = events[-1]
    return {
        "threads": threads,
        "wall_s": round(wall, 2),
        "assigned_after_s": round(event_time(assigned) - start, 2),
        "partitions_recovered": len(recovered),
        "recovery_ms_sum": round(sum(recovered)),
        "recovery_ms_max": max(recovered, default=0),
        "s3_requests": stopped.get("s3_requests"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap, rtt_ms="0,25", threads_help="recovery concurrencies, comma separated")
    args = ap.parse_args(argv)
    ensure_ours_venv()
    stack = stack_settings()
    topic = produce_topic(stack, "recovery", args.partitions, args.partitions * args.records_per_partition)
    group, prefix = f"{topic}-g", f"bench/{topic}"
    first = _run(stack, topic, group, prefix, stack.s3_endpoint, 8)
    rows = []
    for rtt, endpoint in endpoints(stack, args.rtt_ms):
        for threads in (int(x) for x in args.threads.split(",")):
            row = {"rtt_ms": rtt, **_run(stack, topic, group, prefix, endpoint, threads)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    result = {"partitions": args.partitions, "records_per_partition": args.records_per_partition,
              "first_run": first, "reruns": rows}  # fmt: skip
    write_json(RESULTS / "recovery.json", result)
    print_table(["S3 round trip added", "recovery threads", "assigned after (s)",
                 "recoveries' own ms (sum / max)", "S3 requests"],
                [[r["rtt_ms"], r["threads"], r["assigned_after_s"],
                  f"{r['recovery_ms_sum']:,} / {r['recovery_ms_max']}", r["s3_requests"]]
                 for r in rows])  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
