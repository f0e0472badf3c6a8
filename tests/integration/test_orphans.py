"""The hole between static membership and the cooperative protocol, on the real broker: a static
member that dies between the two rounds of a cooperative rebalance and comes back with the same
``group.instance.id`` gets the first round's assignment, and the partitions held back for the
second round are owned by nobody. Without a cure they are never consumed (consumer/orphans.py).

The broken group is built with bare confluent-kafka members (a raw static member killed inside
its revoke callback, exactly between the rounds); then ``consumer run --processes 2`` takes both
instance ids over and must still export every record exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from support import (
    REPO,
    assert_exported_exactly_once,
    consumer_cmd,
    describe_group,
    kafka_conf,
    log_events,
    note_log,
    unique,
)

from consumer.producer import produce

RECORDS = 20_000

#: A bare static member: prints its assignments; with die=1 it dies inside its first revoke, after
#: the first round took partitions from it and before it could rejoin for the second.
MEMBER = r"""
import os, sys
from confluent_kafka import Consumer
boot, group, iid, topic, die = sys.argv[1:6]
c = Consumer({"bootstrap.servers": boot, "group.id": group, "group.instance.id": iid,
              "partition.assignment.strategy": "cooperative-sticky", "session.timeout.ms": 45000,
              "enable.auto.commit": False})
def on_assign(cons, parts):
    print("assigned", sorted(p.partition for p in parts), flush=True)
def on_revoke(cons, parts):
    print("revoked", sorted(p.partition for p in parts), flush=True)
    if die == "1" and parts:
        os._exit(9)
c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
while True:
    c.poll(0.2)
"""


def _member(stack: Any, group: str, iid: str, topic: str, die: bool, out: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-c", MEMBER, stack.kafka_bootstrap, group, iid, topic, "1" if die else "0"]
    return subprocess.Popen(argv, stdout=note_log(out).open("wb"), stderr=subprocess.STDOUT)


def _wait_for_line(path: Path, line: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in path.read_text(errors="replace").splitlines():
            return
        time.sleep(0.1)
    tail = path.read_text()[-2000:]
    raise AssertionError(f"no {line!r} from the bare member (exit {proc.poll()}):\n{tail}")


def _unowned(stack: Any, group: str, topic: str) -> set[int]:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(kafka_conf({"bootstrap.servers": stack.kafka_bootstrap}))
    desc = describe_group(admin, group)
    owned = {tp.partition for m in desc.members for tp in m.assignment.topic_partitions if tp.topic == topic}
    return set(range(4)) - owned


def test_partitions_left_unowned_by_a_static_member_dying_mid_rebalance_are_handed_out(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    topic, group, host = unique("orphans"), unique("g"), unique("h")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=4, seed=31)

    # The broken group: <host>-0 owns everything; <host>-1 joins; <host>-0 dies between the rounds.
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    a = _member(stack, group, f"{host}-0", topic, True, a_log)
    b: subprocess.Popen[bytes] | None = None
    try:
        _wait_for_line(a_log, "assigned [0, 1, 2, 3]", a)
        b = _member(stack, group, f"{host}-1", topic, False, b_log)
        assert a.wait(timeout=60) == 9, a_log.read_text()
        _wait_for_line(b_log, "assigned []", b)  # the first round: nothing for it yet
    finally:
        for p in (a, b):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    # Both are gone, but as static members their sessions (45 s) keep the first round's
    # assignment in the group: some partitions are owned by no one.
    assert _unowned(stack, group, topic), "the bare members did not leave partitions unowned"

    # Our members take both instance ids over and get that assignment; one of them must rejoin.
    cmd = consumer_cmd(
        topic, group, out, "--row-group-rows", "2000", "--processes", "2", "--host-id", host,
        "--until-caught-up", "--orphan-grace", "5s", "--caught-up-timeout", "120s",
    )  # fmt: skip
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    events = log_events(run.stderr + run.stdout)
    assert run.returncode == 0, run.stderr[-4000:]
    rejoined = [e for e in events if e.get("event", "").startswith("partitions owned by no member")]
    assert rejoined, run.stderr[-4000:]
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)
