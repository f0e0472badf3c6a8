"""Bounded, graceful shutdown under load, on the real stack.

A consumer with a big backlog and large row groups (everything it reads waits in memory) gets
SIGTERM mid-stream. It must exit 0 within ``--shutdown-timeout`` (asserted with a generous +10 s
liveness bound; the measured time is printed, not asserted), committing only durable rows, and
a restart with ``--until-caught-up`` must export every record exactly once.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from support import (
    assert_exported_exactly_once,
    count,
    run_consumer,
    start_consumer,
    unique,
)

from consumer.producer import produce

RECORDS = int(os.environ.get("SHUTDOWN_RECORDS", "240000"))
BIG = (
    "--row-group-rows", "2000000",
    "--row-group-bytes", "256MiB",
    "--file-bytes", "1GiB",
    "--memory-bytes", "2GiB",
    "--row-group-max-age", "10m",
)  # fmt: skip


@pytest.mark.parametrize("timeout", ["25s", "1ms"])
def test_sigterm_under_load_exits_0_within_the_timeout_and_a_restart_loses_nothing(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path, timeout: str
) -> None:
    """25 s: every partition's rows are made durable. 1 ms: the deadline has passed before the
    first partition is reached, so none is flushed — the partitions are named in the log, nothing
    of theirs is committed, and the restart consumes them again."""
    from consumer.config import parse_duration

    bound = parse_duration(timeout)
    topic, group = unique("shutdown"), unique("g")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=4, seed=3)
    running = start_consumer(topic, group, out, *BIG, "--shutdown-timeout", timeout)
    running.wait_for(lambda ev: count(ev, "partitions assigned") > 0, timeout=60, what="assignment")
    time.sleep(4)  # mid-stream: the arenas hold rows, the backlog is far from consumed
    durable_before = count(running.events(), "row group durable")  # a row group may fill by itself
    t0 = time.monotonic()
    running.proc.send_signal(signal.SIGTERM)
    code = running.stop(timeout=bound + 10)
    took = time.monotonic() - t0
    events = running.events()
    assert code == 0, running.log()[-4000:]
    print(f"shutdown-timeout {timeout}: exited in {took:.1f}s")
    assert count(events, "stopped") == 1
    left = [e for e in events if str(e.get("event", "")).startswith("shutdown: buffered rows")]
    durable = count(events, "row group durable") - durable_before  # made durable by the shutdown
    print(f"row groups made durable: {durable}; partitions left: {left[0]['partitions'] if left else []}")
    if timeout == "25s":
        assert not left, left  # the default bound is ample for four partitions' row groups here
    else:
        assert left and left[0]["deadline_passed"], running.log()[-3000:]
        # The loop finishes the batch it is in when the signal arrives, and that batch may fill a
        # row group; what the shutdown itself leaves is named, and the restart below proves that
        # nothing was lost or duplicated either way.
        assert durable <= 4  # at most the batch in progress, one row group per partition

    again = run_consumer(topic, group, out, *BIG, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)


PARTITIONS_BEHIND_SLOW_S3 = 48


def test_sigterm_with_many_partitions_behind_a_slow_s3_flushes_them_side_by_side(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """48 partitions, S3 100 ms away (a delaying proxy), ``--shutdown-timeout 8s``. A flush there
    takes about 0.3 s, so one after another the drain would need about 14 s and leave half the
    partitions to the next owner; side by side every partition's rows are made durable."""
    from urllib.parse import urlsplit

    from bench.slow_s3 import DelayProxy

    endpoint = urlsplit(stack.s3_endpoint)
    proxy = DelayProxy((endpoint.hostname or "127.0.0.1", endpoint.port or 80), 0.05)
    slow = ("--s3-endpoint-url", f"{endpoint.scheme}://127.0.0.1:{proxy.port}")
    topic, group = unique("drain"), unique("g")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", PARTITIONS_BEHIND_SLOW_S3 * 50,
                  partitions=PARTITIONS_BEHIND_SLOW_S3, seed=5)  # fmt: skip
    running = start_consumer(topic, group, out, *BIG, *slow, "--shutdown-timeout", "8s")
    running.wait_for(lambda ev: count(ev, "partitions assigned") > 0, timeout=120, what="assignment")
    time.sleep(3)  # 2,400 records: read in well under a second, each partition's wait in its arena
    assert count(running.events(), "row group durable") == 0
    t0 = time.monotonic()
    running.proc.send_signal(signal.SIGTERM)
    code = running.stop(timeout=8 + 10)
    took = time.monotonic() - t0
    events = running.events()
    assert code == 0, running.log()[-4000:]
    print(f"{PARTITIONS_BEHIND_SLOW_S3} partitions behind a 100 ms S3: exited {took:.1f}s after SIGTERM")
    assert not [e for e in events if str(e.get("event", "")).startswith("shutdown: buffered rows")]
    assert count(events, "row group durable") == PARTITIONS_BEHIND_SLOW_S3

    again = run_consumer(topic, group, out, *BIG, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)
