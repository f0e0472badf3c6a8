"""``consumer finish`` on the in-memory doubles: a deleted topic's open files are made final with
every staged row (the committed ones and those staged past the last commit), in the plain and the
time-bucketed layout, a finish killed at any store request finishes when run again, and a topic
that exists is refused. The real-stack test is in tests/integration/test_operator_actions.py."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from consumer.config import Config
from consumer.decoding import Decoder, load_schema
from consumer.errors import EXIT_CONFIG, EXIT_OK
from consumer.finish import FinishRunner, staged_ends, staged_of
from consumer.layout import Layout
from consumer.runner import GroupRunner
from consumer.samples import encode_raw, make_record, parsed_schema
from consumer.testing import Crash, MemoryBroker, MemoryStore, at_consume, crash_at_request

PARTITIONS, PER_PARTITION = 2, 40
SCHEMA = parsed_schema("page_view")
T0 = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)


def _config(**cfg: Any) -> Config:
    return Config(bootstrap_servers="memory", group_id="g", output="s3://bucket/out", schema="page_view",
                  **{"topics": ("t",), "row_group_rows": 10, "batch_size": 25, **cfg})


def _broker() -> MemoryBroker:
    broker = MemoryBroker()
    broker.create_topic("t", PARTITIONS)
    for i in range(PARTITIONS * PER_PARTITION):
        record = make_record("page_view", i)
        record["ts"] = T0 + timedelta(hours=(i * 7) % 3, seconds=i)  # three hours, interleaved
        broker.produce("t", encode_raw(SCHEMA, record), partition=i % PARTITIONS, key=b"k")
    return broker


def _decoder() -> Decoder:
    return Decoder("raw", schema=load_schema("page_view"))


def _staged_then_deleted(broker: MemoryBroker, store: MemoryStore, config: Config) -> None:
    """A run that stops with every record staged in open files, then the topic is deleted. (A
    finish reads no Kafka offset: rows staged past the last commit, as a run the deletion stopped
    leaves them, are kept the same way; the stack test has those.)"""
    runner = GroupRunner(config, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    at_consume(runner.consumer, {6: runner.request_stop})
    assert runner.run() == EXIT_OK
    assert not _finals(store) and _staged(store)
    for key in [k for k in broker.logs if k[0] == "t"]:
        del broker.logs[key]


def _finish(broker: MemoryBroker, store: MemoryStore, config: Config) -> int:
    runner = FinishRunner(config, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory(),
                          current_topic_id=broker.topic_id)
    return runner.run()


def _finals(store: MemoryStore) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for key, data in store.objects.items():
        if key.endswith(".parquet") and "/_" not in key:
            table = pq.read_table(pa.BufferReader(data))
            columns = table.column("kafka_partition").to_pylist(), table.column("kafka_offset").to_pylist()
            for p, o in zip(*columns, strict=True):
                out.setdefault(p, []).append(o)
    return {p: sorted(o) for p, o in out.items()}


def _staged(store: MemoryStore) -> list[str]:
    return [k for k in store.objects if k.startswith("out/_staging/")]


EVERY = {p: list(range(PER_PARTITION)) for p in range(PARTITIONS)}


@pytest.mark.parametrize("partition_by", [None, "dt={ts:%Y-%m-%d}/hr={ts:%H}"])
def test_a_deleted_topic_s_open_files_become_final_with_every_staged_row(partition_by: str | None) -> None:
    broker, store = _broker(), MemoryStore()
    config = _config(partition_by=partition_by, bucket_grace=86400.0)
    _staged_then_deleted(broker, store, config)
    assert _finish(broker, store, config) == EXIT_OK
    assert _staged(store) == []
    assert _finals(store) == EVERY
    finals = sorted(k for k in store.objects if k.endswith(".parquet"))
    assert _finish(broker, store, config) == EXIT_OK  # run again: nothing left to do
    assert sorted(k for k in store.objects if k.endswith(".parquet")) == finals


def test_a_topic_that_exists_is_refused_with_the_run_that_finishes_it() -> None:
    """The same topic the files were read from (their id is its id): a run finishes them."""
    broker, store = _broker(), MemoryStore()
    config = _config()
    runner = GroupRunner(config, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory(),
                         topic_id=broker.topic_id)
    at_consume(runner.consumer, {6: runner.request_stop})
    assert runner.run() == EXIT_OK
    staged = sorted(_staged(store))
    finish = FinishRunner(config, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory(),
                          current_topic_id=broker.topic_id)
    with capture_logs() as logs:
        assert finish.run() == EXIT_CONFIG
    said = next(e["error"] for e in logs if e["event"] == "stopped: UsageError")
    assert "consumer run --topic t --until-caught-up" in said, said
    assert sorted(_staged(store)) == staged and not _finals(store)


@settings(max_examples=30, deadline=None)
@given(at=st.integers(1, 110))  # a finish of this output makes 109 requests
def test_a_finish_killed_at_any_store_request_finishes_when_run_again(at: int) -> None:
    broker, store = _broker(), MemoryStore()
    config = _config()
    _staged_then_deleted(broker, store, config)
    store.on_op = crash_at_request(at)
    with contextlib.suppress(Crash):  # a kill -9 before that request
        _finish(broker, store, config)
    store.on_op = None
    assert _finish(broker, store, config) == EXIT_OK
    assert _staged(store) == [] and _finals(store) == EVERY


def test_the_end_of_what_is_staged_is_each_partition_s_position() -> None:
    layout = Layout("out")
    keys = [(layout.piece_key("t", 0, 0, 0, 10), 1), (layout.piece_key("t", 0, 0, 10, 25), 1),
            (layout.roll_marker_key("t", 1, 0, 40), 0), (layout.piece_key("t", 1, 0, 0, 40), 1),
            (layout.piece_key("other", 0, 0, 0, 99), 1), ("out/_staging/stray", 1)]
    assert staged_ends(staged_of(layout, keys, ("t",))) == {("t", 0): 25, ("t", 1): 40}


@pytest.mark.parametrize("ids_named", [True, False])
def test_the_files_of_a_topic_deleted_and_created_again_are_finished_only_when_their_id_says_so(
    ids_named: bool
) -> None:
    """The topic of that name now is another one (a new id, KIP-516): the open files here are of
    the earlier topic, whose log is gone, and are finished. Files that name no id (written before
    ids were recorded) cannot tell the two apart: refused, as for a topic that exists."""
    broker, store = _broker(), MemoryStore()
    config = _config()
    runner = GroupRunner(config, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory(),
                         topic_id=broker.topic_id if ids_named else None)
    at_consume(runner.consumer, {6: runner.request_stop})
    assert runner.run() == EXIT_OK
    broker.recreate_topic("t", offsets_kept=False)
    if ids_named:
        assert _finish(broker, store, config) == EXIT_OK
        assert _staged(store) == [] and _finals(store) == EVERY
    else:
        staged = sorted(_staged(store))
        assert _finish(broker, store, config) == EXIT_CONFIG
        assert sorted(_staged(store)) == staged and not _finals(store)


def test_a_topic_with_no_open_file_in_this_output_is_said_and_nothing_is_written() -> None:
    """A wrong --output or --topic: nothing to finish, and the operator is told so."""
    broker, store = _broker(), MemoryStore()
    for key in [k for k in broker.logs if k[0] == "t"]:
        del broker.logs[key]
    with capture_logs() as logs:
        assert _finish(broker, store, _config()) == EXIT_OK
    assert any(e["event"].startswith("nothing to finish") and e["topic"] == "t" for e in logs), logs
    assert not [k for k in store.objects if not k.startswith("out/_probe/")]


def test_a_start_names_the_topics_with_files_open_that_it_does_not_consume() -> None:
    """A topic taken out of --topic (or deleted): its open files are named at every start, with
    both remedies; the topics the run consumes are not."""
    broker, store = _broker(), MemoryStore()
    broker.create_topic("u", 1)
    _staged_then_deleted(broker, store, _config())
    runner = GroupRunner(_config(topics=("u",), until_caught_up=True), store=store, decoder=_decoder(),
                         consumer_factory=broker.consumer_factory())
    with capture_logs() as logs:
        assert runner.run() == EXIT_OK
    named = [e for e in logs if e["event"].startswith("this output holds open files of a topic")]
    assert [(e["topic"], e["partitions"]) for e in named] == [("t", [0, 1])], named
    assert "consumer run --topic t --until-caught-up" in named[0]["hint"]
    assert "consumer finish --topic t" in named[0]["hint"]
