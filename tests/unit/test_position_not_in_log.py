"""A partition's position that the log no longer holds stops the run with what happened, instead
of librdkafka's auto.offset.reset jumping to an end of the log without a word: back to 0 in a
topic deleted and recreated under its name (whose new records the worker would then drop as
already written), or forward over records retention deleted before they were read. On the memory
broker; tests/integration/test_operator_actions.py does the same on the real one."""

from __future__ import annotations

from typing import Any

import pytest
from structlog.testing import capture_logs

from consumer.config import Config
from consumer.errors import EXIT_FATAL, position_not_in_log
from consumer.samples import encode_raw, make_record, parsed_schema
from consumer.testing import (
    MemoryBroker,
    MemoryStore,
    at_consume,
    memory_runner,
    page_view_broker,
)


def _produce(broker: MemoryBroker, n: int, first: int) -> None:
    schema = parsed_schema("page_view")
    for i in range(first, first + n):
        broker.produce("t", encode_raw(schema, make_record("page_view", i)), key=b"k")


def _run(broker: MemoryBroker, store: MemoryStore, **cfg: Any) -> tuple[int, list[dict[str, Any]]]:
    runner = memory_runner(broker, store, row_group_rows=10, until_caught_up=True, **cfg)
    with capture_logs() as logs:
        code = runner.run()
    return code, logs


def _stop(logs: list[dict[str, Any]]) -> str:
    return str(next(e for e in logs if e["event"] == "stopped: PositionNotInLog")["error"])


def _replay_5_to_20(broker: MemoryBroker, store: MemoryStore, **cfg: Any) -> Any:
    """``consumer replay --from 0=5 --to 0=20`` of topic ``t`` into ``s3://bucket/out``."""
    from consumer.decoding import Decoder, load_schema
    from consumer.replay import Bound, ReplayRunner

    return ReplayRunner(
        Config(bootstrap_servers="memory", group_id="consumer-replay", topics=("t",),
               output="s3://bucket/out", schema="page_view", row_group_rows=10, **cfg),
        store=store, decoder=Decoder("raw", schema=load_schema("page_view")),
        start=Bound.parse("0=5"), stop=Bound.parse("0=20"), consumer_factory=broker.consumer_factory(),
    )  # fmt: skip


@pytest.mark.parametrize("until_caught_up", [True, False])
def test_a_recreated_topic_stops_the_run_and_its_new_records_are_not_dropped_as_written(
    until_caught_up: bool,
) -> None:
    """On a cluster without topic ids (before Kafka 2.8), or with output written before they were
    recorded, the position past the new log's end is what shows the topic was recreated
    (tests/unit/test_recreated_topic.py: with ids, recovery stops first, whatever the log's end)."""
    broker, store = page_view_broker(1, 30), MemoryStore()
    broker.topic_ids = None
    assert _run(broker, store)[0] == 0
    written = dict(store.objects)
    broker.recreate_topic("t")
    _produce(broker, 12, first=5000)
    runner = memory_runner(broker, store, row_group_rows=10, until_caught_up=until_caught_up)
    with capture_logs() as logs:
        assert runner.run() == EXIT_FATAL
    problem = _stop(logs)
    assert problem.startswith("t[0]: the position 30 is no longer in the partition's log (now [0, 12))")
    assert "deleted and recreated" in problem and "another --output prefix with a new --group-id" in problem
    assert runner.stats.records == 0  # none of the new records was taken for an old one
    assert store.objects == written and broker.committed_offset("g", "t", 0) == 30


def test_records_retention_deleted_before_they_were_read_stop_the_run_until_the_offset_is_moved() -> None:
    broker, store = page_view_broker(1, 20), MemoryStore()
    assert _run(broker, store)[0] == 0
    _produce(broker, 30, first=20)  # offsets 20..49, then retention deletes below 35 unread
    broker.truncate("t", 0, 35)
    code, logs = _run(broker, store)
    assert code == EXIT_FATAL
    problem = _stop(logs)
    assert "records [20, 35) were deleted by retention before they were read" in problem
    assert "--reset-offsets --to-offset 35" in problem
    assert broker.committed_offset("g", "t", 0) == 20
    broker.reset_offsets("g", "t", 0, 35)  # the operator's answer: go on without them
    assert _run(broker, store)[0] == 0
    assert broker.committed_offset("g", "t", 0) == 50


@pytest.mark.parametrize(("reset", "taken"), [(None, 12), ("earliest", 12), ("latest", 4)])
def test_a_partition_with_no_position_starts_where_x_auto_offset_reset_says(
    reset: str | None, taken: int
) -> None:
    """-X auto.offset.reset keeps its meaning for a partition nothing is known about: where it
    starts (earliest by default). librdkafka itself is always given "error"."""
    broker, store = page_view_broker(1, 8), MemoryStore()
    props = {} if reset is None else {"auto.offset.reset": reset}
    runner = memory_runner(broker, store, row_group_rows=10, kafka_properties=props)
    assert runner.consumer.conf["auto.offset.reset"] == "error"
    # the first consume assigned the partition
    at_consume(runner.consumer, {2: lambda: _produce(broker, 4, first=100), 4: runner.request_stop})
    with capture_logs() as logs:
        assert runner.run() == 0
    assert runner.stats.records == taken, logs
    assert broker.committed_offset("g", "t", 0) == 12


def test_an_unknown_x_auto_offset_reset_is_a_config_problem() -> None:
    config = Config(bootstrap_servers="k", group_id="g", topics=("t",), output="s3://b/o", schema="page_view",
                    kafka_properties={"auto.offset.reset": "earlist"})  # fmt: skip
    assert any("-X auto.offset.reset=earlist unknown" in p for p in config.problems())


def test_what_the_stop_says_follows_from_the_watermarks() -> None:
    assert "deleted and recreated" in position_not_in_log("t", 0, 30, 0, 12)
    assert "with a new --group-id" in position_not_in_log("t", 0, 30, 0, 12)
    gone = position_not_in_log("t", 2, 20, 35, 50)
    assert "records [20, 35) were deleted by retention" in gone and "--to-offset 35" in gone
    assert "(--from 2=35,…)" in position_not_in_log("t", 2, 20, 35, 50, replay=True)
    unknown = position_not_in_log("t", 0, 20, None, None)
    assert "OFFSET_OUT_OF_RANGE" in unknown and "(now" not in unknown and "--reset-offsets" in unknown
    assert "another --from" in position_not_in_log("t", 0, 20, None, None, replay=True)


def test_a_replay_overtaken_by_retention_says_to_replay_from_the_log_start() -> None:
    """A replay reading [5, 20) while retention deletes everything below 15: exit 5 naming what
    was lost and the --from to replay from, not a jump to 15."""
    broker, store = page_view_broker(1, 25), MemoryStore()
    runner = _replay_5_to_20(broker, store, batch_size=3)
    runner.consumer.on_consume = lambda _c: broker.truncate("t", 0, 15) if runner.stats.records else None
    with capture_logs() as logs:
        assert runner.run() == EXIT_FATAL
    problem = _stop(logs)
    assert "records [8, 15) were deleted by retention" in problem and "(--from 0=15,…)" in problem


def test_a_replay_asked_to_start_before_the_log_start_says_so() -> None:
    broker, store = page_view_broker(1, 25), MemoryStore()
    broker.truncate("t", 0, 10)
    runner = _replay_5_to_20(broker, store)
    with capture_logs() as logs:
        assert runner.run() == 0
    warned = [e for e in logs if e["event"].startswith("replay bound before the log start")]
    assert [(e["asked"], e["log_start"]) for e in warned] == [(5, 10)]
