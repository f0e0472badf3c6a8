"""A topic deleted and created again under its name, found by its id (KIP-516) before recovery
commits or deletes anything. Its offsets start again at 0: a committed position (kept by the
broker) or one adopted from S3 (the offsets went with the topic) would take the new topic's
records below it for ones already written and skip them, silently, and write the rest into the
old topic's files. The position check (tests/unit/test_position_not_in_log.py) only sees it while
the new log is shorter than the output. On the memory broker, which gives every creation a new
id as a real cluster does; tests/integration/test_operator_actions.py does it on the real one."""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from consumer.errors import EXIT_FATAL
from consumer.samples import encode_raw, make_record, parsed_schema
from consumer.testing import (
    MemoryBroker,
    MemoryStore,
    at_consume,
    memory_runner,
    page_view_broker,
)
from consumer.worker import TOPIC_ID_KEY


def _produce(broker: MemoryBroker, n: int, first: int, topic: str = "t") -> None:
    schema = parsed_schema("page_view")
    for i in range(first, first + n):
        broker.produce(topic, encode_raw(schema, make_record("page_view", i)), key=b"k")


def _run(broker: MemoryBroker, store: MemoryStore, **cfg: Any) -> tuple[int, list[dict[str, Any]], Any]:
    runner = memory_runner(broker, store, **{"row_group_rows": 10, "until_caught_up": True, **cfg})
    with capture_logs() as logs:
        code = runner.run()
    return code, logs, runner


def _stopped_with(logs: list[dict[str, Any]]) -> str:
    return str(next(e for e in logs if e["event"] == "stopped: IntegrityError")["error"])


def _stage_without_rolling(broker: MemoryBroker, store: MemoryStore) -> None:
    """Run until the partition's 30 records are durable in an open file, then SIGTERM."""
    runner = memory_runner(broker, store, row_group_rows=10)
    at_consume(runner.consumer, {4: runner.request_stop})
    assert runner.run() == 0
    assert broker.committed_offset("g", "t", 0) == 30
    assert any("/_staging/" in k for k in store.objects) and not _finals(store)


def _finals(store: MemoryStore, prefix: str = "out/") -> dict[str, bytes]:
    return {k: v for k, v in store.objects.items()
            if k.startswith(prefix) and k.endswith(".parquet") and "/_" not in k}  # fmt: skip


@pytest.mark.parametrize("offsets_kept", [True, False], ids=["offsets-kept", "offsets-gone"])
@pytest.mark.parametrize("output", ["final", "staged"])
def test_a_recreated_topic_longer_than_the_output_stops_before_anything_is_committed(
    offsets_kept: bool, output: str
) -> None:
    broker, store = page_view_broker(1, 30), MemoryStore()
    if output == "final":
        assert _run(broker, store)[0] == 0
    else:
        _stage_without_rolling(broker, store)
    written = dict(store.objects)
    broker.recreate_topic("t", offsets_kept=offsets_kept)
    _produce(broker, 50, first=5000)  # offsets 0..49: past the 30 already written
    code, logs, runner = _run(broker, store)
    assert code == EXIT_FATAL
    said = _stopped_with(logs)
    assert said.startswith("t[0]: the output here was read from an earlier topic 't' (topic id t-id1), and "
                           "the topic is now another one (id t-id2): it was deleted and created again")
    assert "Nothing was committed or deleted. Export the new topic to another --output" in said
    assert "start once with --accept-topic-id t-id2." in said
    assert runner.stats.records == 0
    assert store.objects == written
    assert broker.committed_offset("g", "t", 0) == (30 if offsets_kept else None)
    # the operator's answer: a new group into a new prefix exports the new topic whole
    code, _, _ = _run(broker, store, group_id="g2", output="s3://bucket/out2")
    assert code == 0
    tables = [pq.read_table(io.BytesIO(data)) for data in _finals(store, "out2/").values()]
    assert sorted(o for t in tables for o in t.column("kafka_offset").to_pylist()) == list(range(50))


def test_every_piece_and_final_file_names_the_topic_id_it_was_read_from() -> None:
    broker, store = page_view_broker(1, 30), MemoryStore()
    _stage_without_rolling(broker, store)
    pieces = {k: v for k, v in store.objects.items() if k.endswith(".piece")}
    assert pieces
    for data in pieces.values():
        assert pq.read_metadata(io.BytesIO(data)).metadata[TOPIC_ID_KEY.encode()] == b"t-id1"
    assert _run(broker, store)[0] == 0
    (final,) = _finals(store).values()
    assert pq.read_metadata(io.BytesIO(final)).metadata[TOPIC_ID_KEY.encode()] == b"t-id1"


def test_accept_topic_id_continues_once_and_the_output_then_names_the_new_id() -> None:
    """A topic moved to another cluster with its offsets kept (Cluster Linking, a restore) has a
    new id but the same records at the same offsets: ``--accept-topic-id`` with exactly the new id
    continues, and what it writes names the new id, so later recoveries pass without it."""
    broker, store = page_view_broker(1, 30), MemoryStore()
    _stage_without_rolling(broker, store)
    broker.recreate_topic("t")  # stands for the moved topic: new id, offsets kept
    _produce(broker, 40, first=0)  # the same records at the same offsets, then 10 more
    code, logs, _ = _run(broker, store, accept_topic_id="t-id1")  # not the id the topic has now
    assert code == EXIT_FATAL and "--accept-topic-id t-id2" in _stopped_with(logs)
    code, logs, _ = _run(broker, store, accept_topic_id="t-id2")
    assert code == 0, logs
    warned = [e for e in logs if e["event"].startswith("continuing output read from another topic")]
    assert warned and warned[0]["topic_id_in_s3"] == ["t-id1"] and warned[0]["topic_id"] == "t-id2"
    (final,) = _finals(store).values()
    meta = pq.read_metadata(io.BytesIO(final))
    assert meta.metadata[TOPIC_ID_KEY.encode()] == b"t-id2"
    assert sorted(pq.read_table(io.BytesIO(final)).column("kafka_offset").to_pylist()) == list(range(40))
    _produce(broker, 5, first=40)
    code, logs, _ = _run(broker, store)  # without the flag: the output names the new id now
    assert code == 0, logs
    assert not any(e["event"].startswith("continuing output") for e in logs)


def test_output_that_names_no_topic_id_and_a_cluster_without_ids_are_not_checked() -> None:
    """Files written before ids were recorded continue after an upgrade; a cluster that gives no
    ids (before Kafka 2.8, or no answer) turns the check off rather than stopping every run."""
    broker, store = page_view_broker(1, 30), MemoryStore()
    broker.topic_ids = None
    _stage_without_rolling(broker, store)
    broker.topic_ids = {"t": "t-id9"}  # the upgrade, on a cluster with ids
    _produce(broker, 10, first=30)
    code, logs, _ = _run(broker, store)
    assert code == 0, logs
    broker.recreate_topic("t")
    broker.topic_ids = None  # … and a cluster that does not say
    _produce(broker, 50, first=5000)
    code, logs, _ = _run(broker, store)
    assert code == 0, logs  # the known limit: nothing to compare with


def test_the_bucketed_layout_stops_the_same_way() -> None:
    broker, store = page_view_broker(1, 30), MemoryStore()
    template = "dt={@timestamp:%Y-%m-%d}"
    assert _run(broker, store, partition_by=template, file_rows=1000)[0] == 0
    written = dict(store.objects)
    broker.recreate_topic("t", offsets_kept=False)
    _produce(broker, 50, first=5000)
    code, logs, _ = _run(broker, store, partition_by=template, file_rows=1000)
    assert code == EXIT_FATAL
    assert "the output here was read from an earlier topic 't' (topic id t-id1)" in _stopped_with(logs)
    assert store.objects == written


def test_a_topic_recreated_while_a_member_reads_it_stops_the_next_flush_before_it_writes() -> None:
    """librdkafka fetches on from the old position in the new topic: the records it hands over
    are the new topic's, taken for the old one's next ones. The flush asks for the topic's id
    before it writes anything, and stops the run."""
    broker, store = page_view_broker(1, 30), MemoryStore()
    runner = memory_runner(broker, store, row_group_rows=10)
    written: dict[str, bytes] = {}

    def recreate() -> None:  # the 30 old records are durable and committed
        written.update(store.objects)
        broker.recreate_topic("t", offsets_kept=False)
        _produce(broker, 50, first=5000)  # the consumer's position, 30, is inside the new log

    # without the check the run would go on: the tenth consume ends it
    at_consume(runner.consumer, {3: recreate, 10: runner.request_stop})
    with capture_logs() as logs:
        assert runner.run() == EXIT_FATAL
    said = _stopped_with(logs)
    assert said.startswith("t[0]: topic 't' was deleted and created again under its name while this member "
                           "read it (topic id t-id1, now t-id2)")
    assert "None of them was written or committed" in said
    assert written and store.objects == written


class _Admin:
    """``AdminClient.describe_topics`` answering with ``topic_id``, or raising when it is None."""

    def __init__(self, topic_id: str | None) -> None:
        self.topic_id, self.calls = topic_id, 0

    def describe_topics(self, topics: Any, request_timeout: float) -> dict[str, Any]:
        from concurrent.futures import Future
        from types import SimpleNamespace

        self.calls += 1
        if self.topic_id is None:
            raise RuntimeError("KafkaError{code=_TRANSPORT}")
        answer: Future[Any] = Future()
        answer.set_result(SimpleNamespace(topic_id=self.topic_id))
        return {"t": answer}


def test_flushes_ask_for_the_topic_id_each_time_but_not_while_the_cluster_does_not_answer() -> None:
    """The runner's lookup against a real cluster: a flush asks every time; recoveries share an
    answer for 10 s; after no answer nobody asks for 30 s, so a broker outage does not add the
    request's timeout to every flush. All zeros (a broker without ids) counts as no answer."""
    now = [0.0]
    runner = memory_runner(page_view_broker(1, 1), MemoryStore(), clock=lambda: now[0])
    ask = runner._topic_id_now  # what the runner uses against a real cluster
    runner._admin = admin = _Admin("abc")
    assert [ask("t", True), ask("t", True), ask("t", False)] == ["abc"] * 3 and admin.calls == 2
    now[0] = 11.0
    assert ask("t", False) == "abc" and admin.calls == 3
    runner._admin = down = _Admin(None)
    with capture_logs() as logs:
        assert ask("t", True) is None and ask("t", True) is None and ask("t", False) is None
    assert down.calls == 1 and [e["log_level"] for e in logs] == ["warning"]
    now[0] = 42.0
    runner._admin = _Admin("AAAAAAAAAAAAAAAAAAAAAA")
    assert ask("t", True) is None


@pytest.mark.parametrize("partition_by", [None, "dt={@timestamp:%Y-%m-%d}"], ids=["plain", "bucketed"])
@pytest.mark.parametrize("offsets_kept", [True, False], ids=["offsets-kept", "offsets-gone"])
def test_output_of_dead_letters_only_names_the_topic_and_a_recreated_topic_stops(
    offsets_kept: bool, partition_by: str | None
) -> None:
    """Every record the old topic held was bad: its dead letters were the partition's only output.
    Their lines name the topic id, and recovery reads the newest one's when nothing newer names
    one: before, the new topic was read from the kept or adopted position (20), its first 20
    records skipped and the rest written beside the old dead letters, exit 0. Dead letters written
    before ids were recorded are not checked."""
    cfg: dict[str, Any] = {"partition_by": partition_by} if partition_by else {}
    broker, store = MemoryBroker(), MemoryStore()
    broker.create_topic("t")
    schema = parsed_schema("page_view")
    for i in range(20):
        broker.produce("t", encode_raw(schema, make_record("page_view", i)) + b"\x00\x01", key=b"k")
    assert _run(broker, store, **cfg)[0] == 0
    letters = [k for k in store.objects if "/_dead_letters/" in k]
    lines = [line for k in letters for line in store.objects[k].splitlines()]
    assert len(lines) == 20 and all(json.loads(line)["topic_id"] == "t-id1" for line in lines)
    written = dict(store.objects)
    broker.recreate_topic("t", offsets_kept=offsets_kept)
    _produce(broker, 50, first=5000)
    code, logs, _ = _run(broker, store, **cfg)
    assert code == EXIT_FATAL, logs
    assert "read from an earlier topic 't' (topic id t-id1)" in _stopped_with(logs)
    assert store.objects == written
    assert broker.committed_offset("g", "t", 0) == (20 if offsets_kept else None)
    # The same dead letters as an earlier version wrote them, without the id: not checked.
    for key in letters:
        store.objects[key] = b"".join(
            json.dumps({k: v for k, v in json.loads(line).items() if k != "topic_id"}).encode() + b"\n"
            for line in written[key].splitlines()
        )
    code, logs, _ = _run(broker, store, **cfg)
    assert code == 0, logs
