"""Kafka facts on the real broker of `dev/stack` (Apache Kafka 4.1.2, KRaft)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_CREATE_TIME,
    Consumer,
    KafkaError,
    Message,
    Producer,
    TopicPartition,
)
from support import kafka_conf

if TYPE_CHECKING:
    from support import StackSettings

PARTITIONS = 4


def _consumer(stack: StackSettings, group: str | None = None, **extra: Any) -> Consumer:
    conf: dict[str, Any] = {
        "bootstrap.servers": stack.kafka_bootstrap,
        "group.id": group or f"g-{uuid.uuid4().hex[:10]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        **extra,
    }
    return Consumer(kafka_conf(conf))


def _produce(stack: StackSettings, topic: str, records: list[tuple[int, bytes, bytes, int]]) -> None:
    producer = Producer(
        kafka_conf({"bootstrap.servers": stack.kafka_bootstrap, "enable.idempotence": True, "linger.ms": 5})
    )
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(err)

    for partition, key, value, ts in records:
        producer.produce(
            topic, value=value, key=key, partition=partition, timestamp=ts, on_delivery=on_delivery
        )
    assert producer.flush(30) == 0
    assert errors == []


def _consume_all(consumer: Consumer, expected: int, timeout: float = 30) -> list[Message]:
    out: list[Message] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        out.append(msg)
    return out


def test_produce_consume_exact_bytes_keys_and_timestamps(
    stack: StackSettings, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    base_ts = int(time.time() * 1000) - 60_000
    records = [
        (i % PARTITIONS, f"key-{i}".encode(), bytes([i % 256]) * (i + 1) + b"\x00\xff", base_ts + i)
        for i in range(40)
    ]
    records.append((1, b"", b"", base_ts + 999))  # empty key and value survive as b""
    _produce(stack, topic, records)

    consumer = _consumer(stack)
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        got = _consume_all(consumer, len(records))
    finally:
        consumer.close()

    assert len(got) == len(records)
    by_partition: dict[int, list[tuple[bytes, bytes, int]]] = {}
    for m in got:
        ts_type, ts = m.timestamp()
        assert ts_type == TIMESTAMP_CREATE_TIME
        partition = m.partition()
        assert partition is not None
        by_partition.setdefault(partition, []).append((m.key() or b"", m.value() or b"", ts))
    expected: dict[int, list[tuple[bytes, bytes, int]]] = {}
    for p, k, v, ts in records:
        expected.setdefault(p, []).append((k, v, ts))
    assert by_partition == expected  # per-partition order preserved, bytes exact
    offsets = sorted((m.partition(), m.offset()) for m in got)
    for p in range(PARTITIONS):
        assert [o for q, o in offsets if q == p] == list(range(len(expected[p])))


def test_commit_offsets_and_read_back_with_committed(
    stack: StackSettings, make_topic: Callable[..., str]
) -> None:
    topic = make_topic(partitions=PARTITIONS)
    _produce(stack, topic, [(p, b"k", b"v", int(time.time() * 1000)) for p in list(range(PARTITIONS)) * 3])
    group = f"commit-{uuid.uuid4().hex[:8]}"

    c1 = _consumer(stack, group)
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        before = c1.committed(tps, timeout=10)
        assert all(tp.offset == OFFSET_INVALID for tp in before)
        to_commit = [TopicPartition(topic, p, p + 1) for p in range(PARTITIONS)]
        result = c1.commit(offsets=to_commit, asynchronous=False)
        assert result is not None
        assert all(tp.error is None for tp in result)
    finally:
        c1.close()

    c2 = _consumer(stack, group)  # a fresh member of the same group sees the commits
    try:
        committed = c2.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        assert {tp.partition: tp.offset for tp in committed} == {p: p + 1 for p in range(PARTITIONS)}
        # And consumption resumes from the committed offset (partition 1: offset 2 of 0..2).
        c2.assign([TopicPartition(topic, 1)])  # offset = OFFSET_STORED -> committed
        msg = _consume_all(c2, 1)[0]
        assert (msg.partition(), msg.offset()) == (1, 2)
    finally:
        c2.close()


def test_a_commit_s_note_is_offset_metadata_and_a_note_over_the_broker_s_limit_is_dropped(
    stack: StackSettings, make_topic: Callable[..., str]
) -> None:
    """The note every commit carries (what holds the rows below it) is the offset's metadata, read
    back with the position. The broker refuses metadata over `offset.metadata.max.bytes` (4096 by
    default) with OFFSET_METADATA_TOO_LARGE, raised by `commit()`: the position is committed
    again without it, and later commits send none."""
    from consumer.positions import KafkaGroupPositions

    topic = make_topic(partitions=1)
    group = f"note-{uuid.uuid4().hex[:8]}"
    note = "kafka-parquet-consumer/1 staged s3://bucket/out/"
    consumer = _consumer(stack, group)
    try:
        positions = KafkaGroupPositions(consumer, max_elapsed=30.0)
        positions.commit(topic, 0, 7, note=note)
        assert positions.committed_many([(topic, 0)]) == {(topic, 0): 7}
        assert positions.note(topic, 0) == note
        assert not positions.notes_refused

        positions.commit(topic, 0, 9, note="x" * 5000)
        assert positions.notes_refused
        assert positions.committed_many([(topic, 0)]) == {(topic, 0): 9}
        assert positions.note(topic, 0) == ""
        positions.commit(topic, 0, 11, note=note)  # the cluster said no once: no more notes
        assert positions.committed_many([(topic, 0)]) == {(topic, 0): 11}
        assert positions.note(topic, 0) == ""
    finally:
        consumer.close()


def test_offsets_for_times(stack: StackSettings, make_topic: Callable[..., str]) -> None:
    topic = make_topic(partitions=2)
    base = int(time.time() * 1000) - 3_600_000  # recent: within any retention window
    # Partition 0: timestamps base, base+10, ..., base+90 at offsets 0..9.
    _produce(stack, topic, [(0, b"k", str(i).encode(), base + 10 * i) for i in range(10)])
    consumer = _consumer(stack)
    try:
        # One partition per call: librdkafka answers -1 for every entry when the same
        # partition appears twice in a single offsets_for_times() request.
        cases = [
            (0, base - 1, 0),  # before everything -> first offset
            (0, base + 35, 4),  # between ts 30 and 40 -> offset of the first ts >= query
            (0, base + 50, 5),  # exact match
            (0, base + 10_000, -1),  # after everything -> -1 (OFFSET_END)
            (1, base, -1),  # empty partition -> -1
        ]
        for partition, ts, expected in cases:
            (res,) = consumer.offsets_for_times([TopicPartition(topic, partition, ts)], timeout=10)
            assert res.error is None
            assert res.offset == expected, (partition, ts - base, res)
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        assert (low, high) == (0, 10)
    finally:
        consumer.close()


def _first_offset_after_assign(stack: StackSettings, topic: str, on_assign: Callable[..., None],
                               strategy: str) -> int:
    c = _consumer(stack, **{"partition.assignment.strategy": strategy})  # a new group each time
    try:
        c.subscribe([topic], on_assign=on_assign)
        return int(_consume_all(c, 1)[0].offset())
    finally:
        c.close()


@pytest.mark.parametrize("strategy", ["cooperative-sticky", "range"])
def test_an_offset_written_into_the_assign_callbacks_list_is_ignored_an_assigned_one_is_not(
    stack: StackSettings, make_topic: Callable[..., str], strategy: str
) -> None:
    """What the runner's assign callback relies on (and MemoryConsumer models): confluent-kafka
    assigns the list librdkafka gave unless the callback assigns itself, so fetching starts at the
    committed offset (here: auto.offset.reset, 0); incremental_assign (cooperative) or assign
    (eager) from inside the callback starts where it says."""
    topic = make_topic(partitions=1)
    _produce(stack, topic, [(0, b"k", b"v", int(time.time() * 1000)) for _ in range(10)])

    def write_only(_c: Consumer, tps: list[TopicPartition]) -> None:
        for tp in tps:
            tp.offset = 5

    def assign_there(c: Consumer, tps: list[TopicPartition]) -> None:
        for tp in tps:
            tp.offset = 5
        if strategy == "range":
            c.assign(tps)
        else:
            c.incremental_assign(tps)

    assert _first_offset_after_assign(stack, topic, write_only, strategy) == 0
    assert _first_offset_after_assign(stack, topic, assign_there, strategy) == 5
