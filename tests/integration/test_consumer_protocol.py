"""KIP-848's rebalance protocol (``-X group.protocol=consumer``, Kafka 4.0 and later) on the real
stack: the coordinator assigns partitions, the client takes no assignor of its own, and a static
member killed without leaving keeps its id until the broker expires it (10 s on the dev stack;
``group.consumer.session.timeout.ms``, 45 s by default)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient
from support import (
    REPO,
    assert_exported_exactly_once,
    consumer_cmd,
    describe_group,
    kafka_conf,
    log_events,
    member_starts,
    start_consumer,
    start_two_members_writing,
    unique,
)

from consumer.producer import produce

RECORDS = 80_000
PROTOCOL = ("-X", "group.protocol=consumer")
FLAGS = ("--row-group-rows", "5000", "--file-rows", "40000", *PROTOCOL)
CRASHED = "member crashed: restarting after backoff"


def _members(bootstrap: str, group: str) -> dict[str, tuple[str, list[int]]]:
    """(member id, partitions) of each member, by group.instance.id, as the coordinator sees
    them. A killed member stays listed, with its partitions, until its session expires: only a
    new member id tells its successor from it."""
    admin = AdminClient(kafka_conf({"bootstrap.servers": bootstrap}))
    desc = describe_group(admin, group, 10)
    out = {}
    for m in desc.members:
        partitions = sorted(p.partition for p in m.assignment.topic_partitions)
        out[str(m.group_instance_id)] = (str(m.member_id), partitions)
    return out


def _wait_for_members(
    bootstrap: str, group: str, ids: list[str], *, not_ids: frozenset[str] = frozenset(), timeout: float = 90
) -> dict[str, tuple[str, list[int]]]:
    """Until every instance in ``ids`` owns partitions under a member id not in ``not_ids``."""
    deadline = time.monotonic() + timeout
    members: dict[str, tuple[str, list[int]]] = {}
    while time.monotonic() < deadline:
        members = _members(bootstrap, group)
        if sorted(members) == sorted(ids) and all(
            parts and member_id not in not_ids for member_id, parts in members.values()
        ):
            return members
        time.sleep(0.5)
    raise AssertionError(f"members never owned partitions as {ids}: {members}")


def _until_caught_up(topic: str, group: str, out: str, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = consumer_cmd(topic, group, out, *FLAGS, *extra, "--until-caught-up")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=400, cwd=REPO)


def test_two_processes_under_the_consumer_protocol_export_every_record_exactly_once(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    topic, group, host = unique("kip848"), unique("g"), unique("h")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=4, seed=21)
    run = _until_caught_up(topic, group, out, "--processes", "2", "--host-id", host)
    events = log_events(run.stderr + run.stdout)
    assert run.returncode == 0, run.stderr[-4000:]
    assert [e["member"] for e in member_starts(events)] == [0, 1]  # each once: nothing crashed
    assert sum(1 for e in events if e.get("event", "").startswith("caught up")) == 2
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)


def test_a_killed_static_member_waits_for_its_id_and_takes_its_partitions_back(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """SIGKILL leaves no LeaveGroup behind: the restarted member's id is still held, the broker
    refuses it (UNRELEASED_INSTANCE_ID, fatal for the client), and the member exits 5 with a hint
    saying so. The supervisor restarts it with backoff until the broker has expired the dead
    member; then it owns partitions again, and nothing is lost or written twice."""
    topic, group, host = unique("kip848-kill"), unique("g"), unique("h")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=4, seed=22)
    sup = start_two_members_writing(topic, group, out, *FLAGS, host=host)
    ids = [f"{host}-0", f"{host}-1"]
    try:
        before = _wait_for_members(stack.kafka_bootstrap, group, ids)  # both joined: the id is held
        os.kill(member_starts(sup.events())[1]["pid"], signal.SIGKILL)
        sup.wait_for(
            lambda ev: any(e.get("event") == CRASHED and e.get("status") == 5 for e in ev),
            timeout=60,
            what="the restarted member refused while its id is held",
        )
        assert "still held by an earlier member" in sup.log()
        # the restarted process let in: a new member id for the killed one's instance, owning
        # partitions (the dead member stays listed with its own until its session expires)
        after = _wait_for_members(stack.kafka_bootstrap, group, ids, not_ids=frozenset({before[ids[1]][0]}))
        assert sorted(p for _, parts in after.values() for p in parts) == [0, 1, 2, 3]
        code = sup.stop(signal.SIGTERM, timeout=25 + 15)
    finally:
        if sup.proc.poll() is None:
            sup.proc.kill()
    assert code == 0, sup.log()[-4000:]
    assert next(e for e in sup.events() if e.get("event") == "members exited")["statuses"] == [0, 0]

    again = _until_caught_up(topic, group, out, "--processes", "2", "--host-id", host)
    assert again.returncode == 0, again.stderr[-4000:]
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)


def test_switching_a_group_from_the_classic_protocol_is_refused_while_classic_members_remain(
    stack: Any, s3: Any, unique_prefix: str, tmp_path: Path
) -> None:
    """The broker converts a classic group to KIP-848's only when no member's assignor state would
    be lost: librdkafka's cooperative-sticky assignor keeps it in userData once a member has been
    through a rebalance, which every long-running group has. A member started with the new
    protocol then exits 5 saying how to switch; once the classic members are stopped and their
    sessions expired, the new protocol takes the group over from its committed offsets and the
    topic is exported exactly once."""
    topic, group = unique("kip848-switch"), unique("g")
    out = f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = produce(stack.kafka_bootstrap, topic, "page_view", RECORDS, partitions=4, seed=23)
    classic = ("--row-group-rows", "5000", "--file-rows", "40000", "-X", "session.timeout.ms=10000")
    first = start_consumer(topic, group, out, *classic, "-X", "group.instance.id=old-0")
    second = None
    try:
        first.wait_for(
            lambda ev: any(e.get("event") == "row group durable" for e in ev), timeout=120, what="writing"
        )
        # a second member: the first goes through a rebalance, as members of a live group have
        second = start_consumer(topic, group, out, *classic, "-X", "group.instance.id=old-1")
        second.wait_for(
            lambda ev: any(e.get("event") == "partitions assigned" and e["partitions"] for e in ev),
            timeout=60,
            what="the second member owning partitions",
        )
        new = _until_caught_up(topic, group, out)
        assert new.returncode == 5, new.stderr[-4000:]
        assert "still has members of the classic protocol" in new.stderr
        assert first.stop(signal.SIGTERM, timeout=40) == 0
        assert second.stop(signal.SIGTERM, timeout=40) == 0
    finally:
        for member in (first, second):
            if member is not None and member.proc.poll() is None:
                member.proc.kill()
    time.sleep(11)  # static members do not leave on stop: their 10 s sessions must run out
    again = _until_caught_up(topic, group, out)
    assert again.returncode == 0, again.stderr[-4000:]
    assert_exported_exactly_once(s3, stack.s3_bucket, unique_prefix, tmp_path, res.partition_counts)
