"""How long a SIGTERM takes to make many partitions' buffered rows durable, as S3's round trip grows.

``python -m bench.drain [--partitions 200] [--records-per-partition 100] [--rtt-ms 0,25,50]
[--threads 1,8]`` produces one topic, then for each S3 round-trip time and each flush concurrency
starts ``consumer run`` in a fresh group, waits until its ``/metrics`` count every record read
(each partition's rows wait in its arena: the row-group age and size budgets are far away), sends
SIGTERM and times the exit. The report gives the seconds from SIGTERM to exit, how many
partitions' row groups were made durable, and how many were left to the next owner because
``--shutdown-timeout`` (25 s, below Kubernetes' 30 s grace) passed first. ``--threads 1`` is the
one-after-another drain that ran before ``consumer.side_by_side.close_all``.

The round trip is made by :class:`bench.recovery.DelayProxy` in front of the local S3 server;
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
from urllib.parse import urlsplit

from bench.adapters import ensure_ours_venv
from bench.common import OURS_VENV, REPO, RESULTS, child_env, json_lines, stack_settings, write_json
from bench.recovery import DelayProxy

#: Runs ours with ``consumer.side_by_side.CLOSE_THREADS`` set to argv[1], then the CLI on the rest.
_WITH_THREADS = (
    "import sys, consumer.side_by_side as s; s.CLOSE_THREADS = int(sys.argv[1]); "
    "from consumer.__main__ import main; sys.exit(main(sys.argv[2:]))"
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
    cmd = [
        str(OURS_VENV / "bin" / "python"), "-c", _WITH_THREADS, str(threads), "run",
        "--group-id", group, "--topic", topic, "--schema", "schemas/order.avsc",
        "--output", f"s3://{stack.bucket}/bench/{group}", "--s3-endpoint-url", s3_endpoint,
        "--log-format", "json", "--metrics-port", str(port := _free_port()),
    ]  # fmt: skip
    env = child_env(stack) | {"PYTHONPATH": str(REPO)}
    with tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False) as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", type=int, default=200)
    ap.add_argument("--records-per-partition", type=int, default=100)
    ap.add_argument("--rtt-ms", default="0,25,50", help="S3 round-trip times to add, comma separated")
    ap.add_argument("--threads", default="1,8", help="flush concurrencies, comma separated")
    args = ap.parse_args(argv)
    from consumer.producer import produce

    ensure_ours_venv()
    stack = stack_settings()
    topic = f"bench-drain-{uuid.uuid4().hex[:8]}"
    records = args.partitions * args.records_per_partition
    produce(stack.bootstrap, topic, "order", records, partitions=args.partitions)
    s3 = urlsplit(stack.s3_endpoint)
    rows = []
    for rtt in (float(x) for x in args.rtt_ms.split(",")):
        endpoint = stack.s3_endpoint
        if rtt > 0:
            proxy = DelayProxy((s3.hostname or "127.0.0.1", s3.port or 80), rtt / 2000)
            endpoint = f"{s3.scheme}://127.0.0.1:{proxy.port}"
        for threads in (int(x) for x in args.threads.split(",")):
            row = {"rtt_ms": rtt, **_run(stack, topic, records, endpoint, threads)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    write_json(RESULTS / "drain.json", {"partitions": args.partitions,
                                        "records_per_partition": args.records_per_partition, "runs": rows})
    print("| S3 round trip added | flush threads | SIGTERM to exit (s) | row groups made durable "
          "| partitions left to the next owner | S3 requests |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rtt_ms']:.0f} ms | {r['threads']} | {r['sigterm_to_exit_s']} "
              f"| {r['row_groups_durable']} | {r['partitions_left']} | {r['s3_requests']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
