"""How long a SIGTERM takes to make many partitions' buffered rows durable, as S3's round trip grows.

``python -m bench.drain [--partitions 200] [--records-per-partition 100] [--rtt-ms 0,25,50]
[--threads 1,8]`` produces one topic, then for each S3 round-trip time and each flush concurrency
starts ``consumer run`` in a fresh group, waits until its ``/metrics`` count every record read
(each partition's rows wait in its arena: the row-group age and size budgets are far away), sends
SIGTERM and times the exit. The report gives the seconds from SIGTERM to exit, how many
partitions' row groups were made durable, and how many were left to the next owner because
``--shutdown-timeout`` (25 s, below Kubernetes' 30 s grace) passed first. ``--threads 1`` is the
one-after-another drain that ran before ``consumer.side_by_side.close_all``.

Each setting also runs ``consumer run --until-caught-up`` in a fresh group, whose end is every
partition's last flush and roll (as at the end of a replay): the report gives the seconds from
"partitions assigned" to "stopped".

The round trip is made by :class:`bench.slow_s3.DelayProxy` in front of the local S3 server;
Kafka is not delayed. Results go to ``bench/results/drain.json`` and are printed as Markdown.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench.adapters import ensure_ours_venv
from bench.common import REPO, RESULTS, json_lines, stack_settings, write_json
from bench.slow_s3 import (
    add_arguments,
    endpoints,
    env,
    event_time,
    ours_cmd,
    print_table,
    produce_topic,
    run_to_end,
)


def _read_everything(port: int, records: int, timeout_s: float) -> None:
    """Wait until the consumer's /metrics counts every record handed to a partition worker."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    read = 0
    while time.monotonic() < deadline:
        time.sleep(0.5)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
                text = resp.read().decode()
        except OSError:
            continue  # not serving yet
        read = sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("kafka_parquet_records_consumed_total"))
        if read >= records:
            return
    raise SystemExit(f"the consumer read {read} of {records} records within {timeout_s:.0f} s")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _run(stack: Any, topic: str, records: int, s3_endpoint: str, threads: int) -> dict[str, Any]:
    group = f"{topic}-{uuid.uuid4().hex[:6]}"
    port = _free_port()
    cmd = ours_cmd("CLOSE_THREADS", threads, stack, topic, group, f"bench/{group}", s3_endpoint,
                   "--metrics-port", str(port))  # fmt: skip
    with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env(stack), stdout=subprocess.DEVNULL, stderr=err)
        try:
            _read_everything(port, records, 300)
        except BaseException:
            proc.kill()
            raise
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        wall = time.monotonic() - t0
    events = json_lines(Path(err.name).read_text())
    Path(err.name).unlink()
    if code != 0:
        raise SystemExit(f"consumer run exited {code}")
    said = [e for e in events if str(e.get("event")).startswith("shutdown: buffered rows")]
    left: list[str] = said[0]["partitions"] if said else []
    return {
        "threads": threads,
        "sigterm_to_exit_s": round(wall, 2),
        "row_groups_durable": sum(e.get("event") == "row group durable" for e in events),
        "partitions_left": len(left),
        "s3_requests": events[-1].get("s3_requests"),
    }


def _run_caught_up(stack: Any, topic: str, s3_endpoint: str, threads: int) -> dict[str, Any]:
    """``consumer run --until-caught-up`` in a fresh group: the seconds from "partitions assigned"
    (recovery done) to "stopped", which is reading the records, then each partition's last flush
    and roll."""
    group = f"{topic}-{uuid.uuid4().hex[:6]}"
    events = run_to_end(ours_cmd("CLOSE_THREADS", threads, stack, topic, group, f"bench/{group}", s3_endpoint,
                                 "--until-caught-up"), stack)  # fmt: skip
    assigned = next(e for e in events if e.get("event") == "partitions assigned")
    return {
        "threads": threads,
        "assigned_to_stopped_s": round(event_time(events[-1]) - event_time(assigned), 2),
        "files_rolled": sum(e.get("event") == "file rolled" for e in events),
        "s3_requests": events[-1].get("s3_requests"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(ap, rtt_ms="0,25,50", threads_help="flush concurrencies, comma separated")
    args = ap.parse_args(argv)
    ensure_ours_venv()
    stack = stack_settings()
    records = args.partitions * args.records_per_partition
    topic = produce_topic(stack, "drain", args.partitions, records)
    rows: list[dict[str, Any]] = []
    ends: list[dict[str, Any]] = []
    for rtt, endpoint in endpoints(stack, args.rtt_ms):
        for threads in (int(x) for x in args.threads.split(",")):
            row = {"rtt_ms": rtt, **_run(stack, topic, records, endpoint, threads)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
            ended = {"rtt_ms": rtt, **_run_caught_up(stack, topic, endpoint, threads)}
            ends.append(ended)
            print(json.dumps(ended), file=sys.stderr)
    write_json(RESULTS / "drain.json", {"partitions": args.partitions,
                                        "records_per_partition": args.records_per_partition,
                                        "runs": rows, "until_caught_up": ends})  # fmt: skip
    print_table(["S3 round trip added", "flush threads", "SIGTERM to exit (s)", "row groups made durable",
                 "partitions left to the next owner", "S3 requests"],
                [[r["rtt_ms"], r["threads"], r["sigterm_to_exit_s"], r["row_groups_durable"],
                  r["partitions_left"], r["s3_requests"]] for r in rows])  # fmt: skip
    print()
    print_table(["S3 round trip added", "flush threads", "`--until-caught-up`: assigned to stopped (s)",
                 "files rolled", "S3 requests"],
                [[r["rtt_ms"], r["threads"], r["assigned_to_stopped_s"], r["files_rolled"], r["s3_requests"]]
                 for r in ends])  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
