"""What the many-partition benches share (``bench.recovery``, ``bench.drain``): a topic of many
partitions, S3 behind a proxy that adds a round trip, and ours run with one of
``consumer.side_by_side``'s thread counts set."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from bench.common import OURS_VENV, REPO, child_env, json_lines

#: Runs ours with ``consumer.side_by_side.<argv[1]>`` set to argv[2], then the CLI on the rest.
_WITH_THREADS = (
    "import sys, consumer.side_by_side as s; setattr(s, sys.argv[1], int(sys.argv[2])); "
    "from consumer.__main__ import main; sys.exit(main(sys.argv[3:]))"
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


def add_arguments(ap: argparse.ArgumentParser, rtt_ms: str, threads_help: str) -> None:
    ap.add_argument("--partitions", type=int, default=200)
    ap.add_argument("--records-per-partition", type=int, default=100)
    ap.add_argument("--rtt-ms", default=rtt_ms, help="S3 round-trip times to add, comma separated")
    ap.add_argument("--threads", default="1,8", help=threads_help)


def produce_topic(stack: Any, name: str, partitions: int, records: int) -> str:
    """A new topic ``bench-<name>-…`` of ``records`` ``order`` records over ``partitions``."""
    from consumer.producer import produce

    topic = f"bench-{name}-{uuid.uuid4().hex[:8]}"
    produce(stack.bootstrap, topic, "order", records, partitions=partitions)
    return topic


def endpoints(stack: Any, rtt_ms: str) -> Iterator[tuple[float, str]]:
    """(round trip added in ms, S3 endpoint URL) for each of ``rtt_ms`` (comma separated): the
    stack's own for 0, else a :class:`DelayProxy` in front of it."""
    s3 = urlsplit(stack.s3_endpoint)
    for rtt in (float(x) for x in rtt_ms.split(",")):
        if rtt <= 0:
            yield rtt, stack.s3_endpoint
        else:
            proxy = DelayProxy((s3.hostname or "127.0.0.1", s3.port or 80), rtt / 2000)
            yield rtt, f"{s3.scheme}://127.0.0.1:{proxy.port}"


def ours_cmd(setting: str, threads: int, stack: Any, topic: str, group: str, prefix: str, endpoint: str,
             *extra: str) -> list[str]:  # fmt: skip
    """``consumer run`` of ``order`` records into ``prefix``, with ``side_by_side.<setting>`` set."""
    return [
        str(OURS_VENV / "bin" / "python"), "-c", _WITH_THREADS, setting, str(threads), "run",
        "--group-id", group, "--topic", topic, "--schema", "schemas/order.avsc",
        "--output", f"s3://{stack.bucket}/{prefix}", "--s3-endpoint-url", endpoint,
        "--log-format", "json", *extra,
    ]  # fmt: skip


def env(stack: Any) -> dict[str, str]:
    return child_env(stack) | {"PYTHONPATH": str(REPO)}


def run_to_end(cmd: list[str], stack: Any) -> list[dict[str, Any]]:
    """Run ``cmd`` to its end (it must exit 0): its log events."""
    proc = subprocess.run(cmd, cwd=REPO, env=env(stack), capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"consumer run exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json_lines(proc.stderr)


def event_time(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00")).timestamp()


def print_table(header: list[str], rows: Iterable[list[Any]]) -> None:
    """A Markdown table on stdout; the first cell of each row is the round trip added (ms)."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print(f"| {row[0]:.0f} ms | " + " | ".join(str(c) for c in row[1:]) + " |")
