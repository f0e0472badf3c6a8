"""consumer.producer.produce on the real broker: a call reuses the producer of the call before
(it has its producer id already), and every record still lands once, in order, where
``i % partitions`` and ``i // partitions`` say; a topic recreated under its name gets a new one."""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]
from support import kafka_conf

from consumer import producer as producer_module
from consumer import samples
from consumer.producer import produce

if TYPE_CHECKING:
    from support import StackSettings

pytestmark = pytest.mark.shares_stack

PARTITIONS = 4


def _values_by_partition(stack: StackSettings, topic: str, expected: int) -> dict[int, list[bytes]]:
    consumer = Consumer(kafka_conf({
        "bootstrap.servers": stack.kafka_bootstrap, "group.id": f"g-{uuid.uuid4().hex[:10]}",
        "enable.auto.commit": False, "auto.offset.reset": "earliest",
    }))
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        out: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(PARTITIONS)}
        deadline, seen = time.monotonic() + 30, 0
        while seen < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                out[msg.partition()].append((msg.offset(), msg.value()))
                seen += 1
        time.sleep(0.5)  # nothing beyond what was produced
        for msg in consumer.consume(1000, timeout=0.5):
            out[msg.partition()].append((msg.offset(), msg.value()))
        for p, got in out.items():
            assert [offset for offset, _ in got] == list(range(len(got))), f"partition {p}: gaps"
        return {p: [value for _, value in got] for p, got in out.items()}
    finally:
        consumer.close()


def _expected(schema: str, n: int) -> dict[int, list[bytes]]:
    parsed = samples.parsed_schema(schema)
    out: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    for i, record in enumerate(samples.generate(schema, n)):
        out[i % PARTITIONS].append(samples.encode_raw(parsed, record))
    return out


def test_calls_share_one_kept_producer_and_every_record_lands_once_in_order(stack: StackSettings) -> None:
    first, second = f"kept-{uuid.uuid4().hex[:10]}", f"kept-{uuid.uuid4().hex[:10]}"
    producer_module._KEPT.close()  # not the one the tests before this one, in this process, were lent
    produce(stack.kafka_bootstrap, first, "page_view", 300)
    kept = producer_module._KEPT._idle
    assert kept is not None, "a call that went well keeps its producer"
    produce(stack.kafka_bootstrap, second, "page_view", 200)
    produce(stack.kafka_bootstrap, first, "page_view", 500, start=300)
    assert producer_module._KEPT._idle is kept, "each later call was lent the same producer"
    assert kept.topics.keys() == {first, second}
    assert _values_by_partition(stack, first, 800) == _expected("page_view", 800)
    assert _values_by_partition(stack, second, 200) == _expected("page_view", 200)


def test_a_topic_recreated_under_its_name_is_produced_to_by_a_new_producer(
    stack: StackSettings, admin: Any
) -> None:
    topic = f"kept-{uuid.uuid4().hex[:10]}"
    produce(stack.kafka_bootstrap, topic, "page_view", 400)
    kept = producer_module._KEPT._idle
    assert kept is not None
    admin.delete_topics([topic], operation_timeout=30)[topic].result(timeout=30)
    deadline = time.monotonic() + 30
    while True:  # the deletion completes on the broker a moment after its answer
        try:
            admin.create_topics([NewTopic(topic, PARTITIONS, 1)], operation_timeout=30)[topic].result(30)
            break
        except Exception:
            assert time.monotonic() < deadline, f"{topic} could not be created again"
            time.sleep(0.2)
    produce(stack.kafka_bootstrap, topic, "page_view", 200)
    again = producer_module._KEPT._idle
    assert again is not None and again is not kept, "the old topic's producer was closed, not lent"
    assert _values_by_partition(stack, topic, 200) == _expected("page_view", 200)
