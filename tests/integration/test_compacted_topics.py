"""Compacted topics (``cleanup.policy=compact``: changelogs, CDC tables, Kafka Streams state): the
log cleaner keeps only the newest record of each key, so the offsets a consumer reads have gaps
wherever older records were, and deletes arrive as tombstones (a key with no value). Exporting
such a topic must still put every record the log holds into exactly one file, every tombstone into
the dead letters with its reason (no silent drop), and ``verify`` (which reads the log) must agree.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from support import REPO, download_finals, kafka_conf, list_keys, read_table, run_consumer, unique

from consumer.samples import encode_raw, make_record, parsed_schema

# Only its own topics, groups and prefixes, and waits for outcomes: see tests/conftest.py.
pytestmark = [pytest.mark.stack, pytest.mark.shares_stack]

KEYS = 50
ROUNDS = 4
PER_ROUND = 500
TOMBSTONES = 10  # keys k0..k9 deleted in the last round
ROLL = 99_999  # the record produced to roll the active segment until the cleaner has run


def read_log(bootstrap: str, topic: str) -> dict[int, bytes | None]:
    """Offset → value of every record the partition's log holds now."""
    c = Consumer(kafka_conf({"bootstrap.servers": bootstrap, "group.id": unique("reader"),
                             "enable.partition.eof": True, "enable.auto.commit": False}))
    c.assign([TopicPartition(topic, 0, 0)])
    out: dict[int, bytes | None] = {}
    try:
        while True:
            m = c.poll(10)
            assert m is not None, "no end of partition within 10 s"
            if m.error() is not None:
                assert m.error().code() == -191, m.error()  # the end of the partition
                return out
            out[m.offset()] = m.value()
    finally:
        c.close()


@pytest.fixture(scope="module")
def compacted(stack: Any, admin: Any) -> tuple[str, dict[int, bytes | None]]:
    """A one-partition topic of 2,000 records, half of them over 50 keys, the other half with a key
    each, and 10 tombstones, compacted by the broker's cleaner, then made a plain topic so that
    nothing is cleaned while the tests read it. Returns (topic, the log it holds: offset → value)."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

    topic = unique("compacted")
    config = {"cleanup.policy": "compact", "segment.ms": "100", "min.cleanable.dirty.ratio": "0.001",
              "min.compaction.lag.ms": "0", "delete.retention.ms": "600000"}
    admin.create_topics([NewTopic(topic, 1, 1, config=config)])[topic].result(timeout=30)
    schema = parsed_schema("page_view")
    producer = Producer(kafka_conf({"bootstrap.servers": stack.kafka_bootstrap, "linger.ms": 5}))
    total = 0
    for r in range(ROUNDS):
        for i in range(PER_ROUND):
            n = r * PER_ROUND + i
            key = f"k{(n // 2) % KEYS}" if n % 2 == 0 else f"u{n}"  # half overwritten, half kept
            producer.produce(topic, encode_raw(schema, make_record("page_view", n)), key=key.encode(),
                             partition=0)
            total += 1
        if r == ROUNDS - 1:
            for k in range(TOMBSTONES):
                producer.produce(topic, None, key=f"k{k}".encode(), partition=0)
                total += 1
        assert producer.flush(30) == 0
        time.sleep(0.3)  # past segment.ms: the next record rolls the segment
    deadline = time.monotonic() + 120
    while len(read_log(stack.kafka_bootstrap, topic)) >= total:
        assert time.monotonic() < deadline, "the log cleaner did not compact the topic in 120 s"
        time.sleep(2)
        producer.produce(topic, encode_raw(schema, make_record("page_view", ROLL)), key=b"roll", partition=0)
        assert producer.flush(30) == 0  # rolls the active segment, so the cleaner can take it
        total += 1
    stop = [ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("retention.ms", "-1", incremental_operation=AlterConfigOpType.SET)]
    resource = ConfigResource("topic", topic, incremental_configs=stop)
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    log, before = read_log(stack.kafka_bootstrap, topic), None
    while log != before:  # a cleaning under way when the policy changed has ended
        time.sleep(2)
        before, log = log, read_log(stack.kafka_bootstrap, topic)
    return topic, log


def test_a_compacted_topic_is_exported_record_for_record_with_its_tombstones_as_dead_letters(
    stack: Any, s3: Any, compacted: tuple[str, dict[int, bytes | None]], unique_prefix: str, tmp_path: Path
) -> None:
    topic, log = compacted
    records = sorted(o for o, v in log.items() if v is not None)
    tombstones = sorted(o for o, v in log.items() if v is None)
    gaps = sum(1 for a, b in zip(sorted(log), sorted(log)[1:], strict=False) if b > a + 1)
    assert gaps > 100, f"{gaps} gaps: the topic was not compacted"
    assert tombstones, "the cleaner removed the tombstones before the test read them"

    group, out = unique("g"), f"s3://{stack.s3_bucket}/{unique_prefix.rstrip('/')}"
    res = run_consumer(topic, group, out, "--row-group-rows", "100", "--file-rows", "300")
    assert res.returncode == 0, res.stderr[-3000:]

    rows = read_table(download_finals(s3, stack.s3_bucket, unique_prefix, tmp_path))
    assert sorted(rows.column("kafka_offset").to_pylist()) == records  # each record once, gaps kept
    by_offset = dict(zip(rows.column("kafka_offset").to_pylist(), rows.column("event_id").to_pylist(),
                         strict=True))
    schema = parsed_schema("page_view")
    indices = [*range(ROUNDS * PER_ROUND), ROLL]
    produced = {encode_raw(schema, make_record("page_view", n)): n for n in indices}
    for offset in records:  # every row is the record the log holds at its offset
        n = produced[log[offset]]  # type: ignore[index]
        assert str(by_offset[offset]) == str(make_record("page_view", n)["event_id"]), offset

    dead: list[dict[str, Any]] = []
    for key, _ in list_keys(s3, stack.s3_bucket, unique_prefix):
        if "/_dead_letters/" in key:
            body = s3.get_object(Bucket=stack.s3_bucket, Key=key)["Body"].read().decode()
            dead += [json.loads(line) for line in body.splitlines()]
    assert sorted(d["offset"] for d in dead) == tombstones
    assert {d["reason"] for d in dead} == {"null value (tombstone): nothing to decode"}

    checked = subprocess.run(
        [sys.executable, "-m", "consumer", "verify", "--output", out, "--topic", topic, "--group-id", group],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert checked.returncode == 0 and "OK:" in checked.stdout, checked.stdout[-3000:] + checked.stderr[-900:]
