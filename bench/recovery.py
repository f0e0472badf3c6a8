"""How long an assignment of many partitions takes to recover, as S3's round trip grows.

``python -m bench.recovery [--partitions 200] [--records-per-partition 100] [--rtt-ms 0,25]
[--threads 1,8]`` produces one topic, runs ``consumer run --until-caught-up`` once so that every
partition has a committed offset and a final file, then runs it again with the same group and
prefix for each S3 round-trip time and each recovery concurrency. Nothing is left to read, so a
rerun is its recoveries: the report gives the seconds from start to "partitions assigned", the
recoveries' own milliseconds and the S3 requests. ``--threads 1`` is the one-after-another
recovery that ran before ``consumer.side_by_side.recover_all``.

The round trip is made by a proxy in front of the local S3 server (:class:`DelayProxy`) that holds
every chunk rtt/2 in each direction, as a farther server would; Kafka is not delayed. Results go
to ``bench/results/recovery.json`` and are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlsplit

from bench.adapters import ensure_ours_venv
from bench.common import OURS_VENV, REPO, RESULTS, child_env, json_lines, stack_settings, write_json

#: Runs ours with ``consumer.side_by_side.RECOVERY_THREADS`` set to argv[1], then the CLI on the rest.
_WITH_THREADS = (
    "import sys, consumer.side_by_side as w; w.RECOVERY_THREADS = int(sys.argv[1]); "
    "from consumer.__main__ import main; sys.exit(main(sys.argv[2:]))"
)


class DelayProxy:
    """A TCP proxy on 127.0.0.1 that forwards to ``target`` and holds every chunk ``delay`` seconds
    (in order, without limiting throughput): a round trip through it takes ``2 * delay`` more."""

    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target, self.delay = target, delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._serve, daemon=True, name="delay-proxy").start()
        self._ready.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        held: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def release() -> None:
            while True:
                due, chunk = await held.get()
                if not chunk:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                dst.write(chunk)
                await dst.drain()
            dst.close()

        sender = asyncio.ensure_future(release())
        try:
            while chunk := await src.read(1 << 16):
                held.put_nowait((time.monotonic() + self.delay, chunk))
        except ConnectionError:
            pass
        held.put_nowait((0.0, b""))
        await sender


def _run(stack: Any, topic: str, group: str, prefix: str, s3_endpoint: str, threads: int) -> dict[str, Any]:
    import subprocess

    cmd = [
        str(OURS_VENV / "bin" / "python"), "-c", _WITH_THREADS, str(threads), "run",
        "--group-id", group, "--topic", topic, "--schema", "schemas/order.avsc",
        "--output", f"s3://{stack.bucket}/{prefix}", "--s3-endpoint-url", s3_endpoint,
        "--log-format", "json", "--until-caught-up",
    ]  # fmt: skip
    t0 = time.monotonic()
    env = child_env(stack) | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    wall = time.monotonic() - t0
    events = json_lines(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"consumer run exited {proc.returncode}: {proc.stderr[-2000:]}")
    start = _ts(events[0])
    assigned = next(e for e in events if e.get("event") == "partitions assigned")
    recovered = [e["ms"] for e in events if e.get("event") == "partition recovered"]
    stopped = events[-1]
    return {
        "threads": threads,
        "wall_s": round(wall, 2),
        "assigned_after_s": round(_ts(assigned) - start, 2),
        "partitions_recovered": len(recovered),
        "recovery_ms_sum": round(sum(recovered)),
        "recovery_ms_max": max(recovered, default=0),
        "s3_requests": stopped.get("s3_requests"),
    }


def _ts(event: dict[str, Any]) -> float:
    from datetime import datetime

    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--partitions", type=int, default=200)
    ap.add_argument("--records-per-partition", type=int, default=100)
    ap.add_argument("--rtt-ms", default="0,25", help="S3 round-trip times to add, comma separated")
    ap.add_argument("--threads", default="1,8", help="recovery concurrencies, comma separated")
    args = ap.parse_args(argv)
    from consumer.producer import produce

    ensure_ours_venv()
    stack = stack_settings()
    topic = f"bench-recovery-{uuid.uuid4().hex[:8]}"
    records = args.partitions * args.records_per_partition
    produce(stack.bootstrap, topic, "order", records, partitions=args.partitions)
    group, prefix = f"{topic}-g", f"bench/{topic}"
    first = _run(stack, topic, group, prefix, stack.s3_endpoint, 8)
    s3 = urlsplit(stack.s3_endpoint)
    rows = []
    for rtt in (float(x) for x in args.rtt_ms.split(",")):
        endpoint = stack.s3_endpoint
        if rtt > 0:
            proxy = DelayProxy((s3.hostname or "127.0.0.1", s3.port or 80), rtt / 2000)
            endpoint = f"{s3.scheme}://127.0.0.1:{proxy.port}"
        for threads in (int(x) for x in args.threads.split(",")):
            row = {"rtt_ms": rtt, **_run(stack, topic, group, prefix, endpoint, threads)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    result = {"partitions": args.partitions, "records_per_partition": args.records_per_partition,
              "first_run": first, "reruns": rows}  # fmt: skip
    write_json(RESULTS / "recovery.json", result)
    print("| S3 round trip added | recovery threads | assigned after (s) "
          "| recoveries' own ms (sum / max) | S3 requests |")  # fmt: skip
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rtt_ms']:.0f} ms | {r['threads']} | {r['assigned_after_s']} | "
              f"{r['recovery_ms_sum']:,} / {r['recovery_ms_max']} | {r['s3_requests']} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
