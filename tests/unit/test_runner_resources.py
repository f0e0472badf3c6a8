"""The runner's resources on the in-memory broker (issue 8, items 10 and 11): no retired worker
outlives its partition, and the memory budget pauses fetching instead of flushing hundreds of
tiny row groups."""

from __future__ import annotations

import gc
from typing import Any

from confluent_kafka import TopicPartition

from consumer.config import Config
from consumer.decoding import Decoder, load_schema
from consumer.runner import GroupRunner
from consumer.samples import encode_raw, make_record, parsed_schema
from consumer.testing import MemoryBroker, MemoryConsumer, MemoryStore
from consumer.worker import PartitionWorker


def broker_with(partitions: int, per_partition: int) -> MemoryBroker:
    schema = parsed_schema("page_view")
    broker = MemoryBroker()
    broker.create_topic("t", partitions)
    for p in range(partitions):
        for i in range(per_partition):
            broker.produce("t", encode_raw(schema, make_record("page_view", p * 1000 + i)), partition=p)
    return broker


def runner(broker: MemoryBroker, store: MemoryStore, **cfg: Any) -> GroupRunner:
    config = Config(
        bootstrap_servers="memory",
        group_id="g",
        topics=("t",),
        output="s3://bucket/out",
        schema="page_view",
        **cfg,
    )
    return GroupRunner(
        config,
        store=store,
        decoder=Decoder("raw", schema=load_schema("page_view")),
        consumer_factory=broker.consumer_factory(),
    )


def live_workers() -> int:
    gc.collect()
    return sum(isinstance(o, PartitionWorker) for o in gc.get_objects())


def test_rebalances_keep_no_retired_workers() -> None:
    """200 revoke/assign cycles of 4 partitions: workers are dropped, their counters kept."""
    broker, store = broker_with(4, 0), MemoryStore()
    r = runner(broker, store)
    before = live_workers()
    tps = [TopicPartition("t", p) for p in range(4)]
    for _ in range(200):
        r._on_assign(r.consumer, [TopicPartition("t", p) for p in range(4)])
        assert len(r.workers) == 4
        r._on_revoke(r.consumer, tps)
    assert r.workers == {} and not hasattr(r, "retired")
    assert live_workers() == before


def test_memory_budget_pauses_fetch_rather_than_flushing_tiny_row_groups() -> None:
    """60 partitions each holding a few rows exceed a tiny budget: no partition holds a useful row
    group, so nothing is flushed early (no one-row row groups); fetching pauses instead."""
    broker, store = broker_with(60, 30), MemoryStore()
    r = runner(broker, store, memory_bytes=20_000, row_group_max_age=3600.0, batch_size=200)
    seen: list[tuple[bool, int]] = []

    def watch(consumer: MemoryConsumer) -> None:
        pieces = sum(1 for k in store.objects if k.endswith(".piece"))
        seen.append((r.budget_paused, pieces))
        if len(seen) == 12:
            r.request_stop()

    r.consumer.on_consume = watch
    assert r.run() == 0
    assert any(paused for paused, _ in seen), seen
    assert all(pieces == 0 for _, pieces in seen), seen  # nothing flushed early by the budget
    # Shutdown made everything durable: one piece per partition that had rows.
    pieces = [k for k in store.objects if k.endswith(".piece")]
    assert len(pieces) <= 60
