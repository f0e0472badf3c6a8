"""``--until-caught-up`` proves another member's partition exported from the group's committed
offset. On a topic written in transactions that offset stops short of the end for good (the last
marker, aborted records), so the member reads on from it (consumer.tail_probe): nothing left below
the end means done, a record left means wait. On the memory broker, whose consumers skip markers
and aborted records as read_committed does; tests/integration/test_transactional_topics.py does
the same with member processes on the real broker."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from consumer.errors import EXIT_INCOMPLETE, EXIT_OK
from consumer.samples import encode_raw, make_record, parsed_schema
from consumer.tail_probe import PROBE_AT_ONCE, Tail, TailProbe, probe_config, tail_of
from consumer.testing import MemoryBroker, MemoryConsumer, MemoryStore, memory_runner

SCHEMA = parsed_schema("page_view")


def _records(broker: MemoryBroker, partition: int, n: int) -> None:
    for i in range(n):
        broker.produce("t", encode_raw(SCHEMA, make_record("page_view", partition * 1000 + i)),
                       partition=partition, key=b"k")


def _two_partitions_ending_in_markers() -> MemoryBroker:
    """Two partitions (one for the member under test, one held by another), each with 10
    committed records, one aborted transaction of 3, and the marker of the last commit (end
    offset 15)."""
    broker = MemoryBroker()
    broker.create_topic("t", 2)
    for p in range(2):
        _records(broker, p, 10)
        broker.end_transaction("t", p, aborted=[b"x", b"y", b"z"])
        broker.end_transaction("t", p)
    return broker


def _other_member(broker: MemoryBroker) -> MemoryConsumer:
    """A member that joins first and keeps partition 0 when the member under test joins (the
    sticky spread gives one each); it never consumes: what it has exported is what the test
    commits for it."""
    other = MemoryConsumer(broker, {"group.id": "g"})
    other.subscribe(["t"])
    return other


@pytest.mark.parametrize(
    ("first", "at_end", "tail"),
    [(None, False, Tail.UNKNOWN), (None, True, Tail.EMPTY), (9, False, Tail.LEFT), (9, True, Tail.LEFT),
     (15, False, Tail.EMPTY), (20, True, Tail.EMPTY)],
)
def test_the_first_record_or_the_end_decides(first: int | None, at_end: bool, tail: Tail) -> None:
    assert tail_of(15, first, at_end) is tail


def test_the_probe_is_no_member_and_never_commits() -> None:
    member = {"bootstrap.servers": "b:9092", "group.id": "g", "group.instance.id": "m-1",
              "partition.assignment.strategy": "cooperative-sticky", "error_cb": print,
              "sasl.username": "u", "enable.partition.eof": False, "auto.offset.reset": "error"}
    conf = probe_config(member)
    assert conf["group.id"] == "g"  # to read the group's committed offsets; it never subscribes
    assert not {"group.instance.id", "partition.assignment.strategy", "error_cb"} & set(conf)
    assert conf["sasl.username"] == "u" and conf["bootstrap.servers"] == "b:9092"
    assert conf["enable.auto.commit"] is False and conf["enable.partition.eof"] is True
    assert conf["isolation.level"] == "read_committed" and conf["auto.offset.reset"] == "earliest"


def test_the_probe_reads_past_markers_and_aborted_records() -> None:
    broker = _two_partitions_ending_in_markers()
    probe = TailProbe(broker.consumer_factory(), probe_config({"group.id": "g"}))
    ends = {("t", 0): 15, ("t", 1): 15}
    assert probe.tails({("t", 0): 10, ("t", 1): 11}, ends) == {("t", 0): Tail.EMPTY, ("t", 1): Tail.EMPTY}
    assert probe.tails({("t", 0): 9, ("t", 1): -1001}, ends) == {("t", 0): Tail.LEFT, ("t", 1): Tail.LEFT}
    broker.produce("t", b"later", partition=0)  # a record after the end seen at start: not ours to wait for
    assert probe.tails({("t", 0): 10}, ends) == {("t", 0): Tail.EMPTY}
    broker.group("g").offsets[("t", 1)] = 11
    assert probe.committed([("t", 0), ("t", 1)]) == {("t", 0): -1001, ("t", 1): 11}
    assert broker.group("g").members == []  # it reads the group, never joins it
    probe.close()


def test_the_probe_reads_many_partitions_a_few_at_a_time() -> None:
    broker = MemoryBroker()
    n = PROBE_AT_ONCE * 2 + 3
    broker.create_topic("t", n)
    for p in range(n):
        _records(broker, p, 2)
        broker.end_transaction("t", p)
    probe = TailProbe(broker.consumer_factory(), probe_config({"group.id": "g"}))
    starts = {("t", p): 2 if p % 2 else 1 for p in range(n)}
    tails = probe.tails(starts, dict.fromkeys(starts, 3))
    assert tails == {("t", p): Tail.EMPTY if p % 2 else Tail.LEFT for p in range(n)}


def test_a_member_proves_the_others_partition_done_past_its_last_markers() -> None:
    broker, store = _two_partitions_ending_in_markers(), MemoryStore()
    runner = memory_runner(broker, store, row_group_rows=4, until_caught_up=True, caught_up_timeout=30.0)
    other = _other_member(broker)
    broker.group("g").offsets[("t", 0)] = 10  # the other member exported its 10 records
    with capture_logs() as logs:
        assert runner.run() == EXIT_OK
    assert runner.workers == {} and broker.committed_offset("g", "t", 1) == 10
    said = [e for e in logs if e["event"].startswith("partition exported: nothing left")]
    assert [(e["partition"], e["committed"], e["end_offset"]) for e in said] == [(0, 10, 15)]
    other.close()


def test_a_member_waits_while_the_others_partition_has_a_record_left() -> None:
    broker, store = _two_partitions_ending_in_markers(), MemoryStore()
    runner = memory_runner(broker, store, row_group_rows=4, until_caught_up=True, caught_up_timeout=0.3)
    other = _other_member(broker)
    broker.group("g").offsets[("t", 0)] = 9  # record 9 is still to export
    with capture_logs() as logs:
        assert runner.run() == EXIT_INCOMPLETE
    stop = next(e for e in logs if e["event"] == "stopped: Incomplete")
    assert "t[0]" in str(stop["error"]) and "t[1]" not in str(stop["error"])
    other.close()


def test_a_file_still_open_keeps_the_others_partition_waiting() -> None:
    """Nothing left to read, but the other member's file is not final yet (staging not empty)."""
    broker, store = _two_partitions_ending_in_markers(), MemoryStore()
    runner = memory_runner(broker, store, row_group_rows=4, until_caught_up=True, caught_up_timeout=0.3)
    other = _other_member(broker)
    broker.group("g").offsets[("t", 0)] = 10
    store.create(runner.layout.staging_dir("t", 0) + "piece", b"open")
    assert runner.run() == EXIT_INCOMPLETE
    other.close()


def test_a_lone_member_makes_no_second_client() -> None:
    """It owns every partition before its first look at the others (2 s after the start)."""
    broker, store = _two_partitions_ending_in_markers(), MemoryStore()
    runner = memory_runner(broker, store, row_group_rows=4, until_caught_up=True)
    assert runner.run() == EXIT_OK
    assert runner._tail_probe is None
    assert [broker.committed_offset("g", "t", p) for p in range(2)] == [10, 10]
