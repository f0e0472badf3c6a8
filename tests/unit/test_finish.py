"""``consumer finish`` on the in-memory doubles: a deleted topic's open files are made final with
every staged row (the committed ones and those staged past the last commit), in the plain and the
time-bucketed layout, a finish killed at any store request finishes when run again, and a topic
that exists is refused. The open files of an output the group moved from (``--output`` changed)
are made final where the other output holds the rest, so every offset is in one of the two and
none in both, in any order of moves. The real-stack tests are in
tests/integration/test_operator_actions.py and test_kafka_acls.py."""

from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from consumer.config import Config
from consumer.decoding import Decoder, load_schema
from consumer.errors import EXIT_CONFIG, EXIT_FATAL, EXIT_OK, EXIT_STORAGE
from consumer.finish import FinishRunner, staged_ends
from consumer.layout import Layout, PieceRef, RollMarker, staged_of
from consumer.positions import same_output
from consumer.recovery import cut_at, held_in_both, holds_all
from consumer.runner import GroupRunner
from consumer.samples import encode_raw, make_record, parsed_schema
from consumer.storage import FatalStorageError, ObjectInfo, TransientStorageError
from consumer.testing import Crash, MemoryBroker, MemoryStore, at_consume, crash_at_request
from consumer.verify import VerifyError, verify
from consumer.worker import OtherOutputListings, OutputListing, held_ranges

PARTITIONS, PER_PARTITION = 2, 40
SCHEMA = parsed_schema("page_view")
T0 = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)


def _config(**cfg: Any) -> Config:
    return Config(bootstrap_servers="memory", group_id="g", schema="page_view",
                  **{"output": "s3://bucket/out", "topics": ("t",), "row_group_rows": 10, "batch_size": 25,
                     **cfg})


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


def _run(broker: MemoryBroker, store: MemoryStore, config: Config) -> int:
    runner = GroupRunner(config, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    return runner.run()


def _refusal(broker: MemoryBroker, store: MemoryStore, config: Config) -> str:
    """What a finish that is refused (status 2) says."""
    with capture_logs() as logs:
        assert _finish(broker, store, config) == EXIT_CONFIG
    return str(next(e["error"] for e in logs if e["event"] == "stopped: UsageError"))


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
    said = _refusal(broker, store, config)
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


def _produce_more(broker: MemoryBroker, start: int, count: int) -> None:
    for i in range(start, start + count):
        record = encode_raw(SCHEMA, make_record("page_view", i))
        broker.produce("t", record, partition=i % PARTITIONS, key=b"k")


def _only(store: MemoryStore, prefix: str) -> MemoryStore:
    part = MemoryStore()
    part.objects = {k: v for k, v in store.objects.items() if k.startswith(prefix + "/")}
    return part


def _in_both(one: MemoryStore, other: MemoryStore) -> dict[int, list[int]]:
    """The offsets of each partition in the final files of two outputs, sorted, repeats kept."""
    both: dict[int, list[int]] = {}
    for p, offsets in [*_finals(one).items(), *_finals(other).items()]:
        both.setdefault(p, []).extend(offsets)
    return {p: sorted(o) for p, o in both.items()}


def _every(per_partition: int) -> dict[int, list[int]]:
    return {p: list(range(per_partition)) for p in range(PARTITIONS)}


@pytest.mark.parametrize("bucket", ["bucket", "another-bucket"])
@pytest.mark.parametrize("stray", [False, True], ids=["committed", "a-piece-whose-commit-was-lost"])
def test_files_left_open_in_an_output_the_group_moved_from_become_final_where_the_new_one_begins(
    bucket: str, stray: bool,
) -> None:
    """``--output`` changed with files open: the group's next commits name the new output, and the
    old one's open files hold committed rows no run of the group will finish. ``consumer finish``
    of the old output makes them final, cut where the new output begins: each offset is in
    exactly one of the two outputs. With a stray piece (durable, its commit lost to a crash), the
    new output starts below it, and the cut leaves it out."""
    broker, store = _broker(), MemoryStore()
    moved_store = store if bucket == "bucket" else MemoryStore()
    old, new = _config(), _config(output=f"s3://{bucket}/new", until_caught_up=True)
    runner = GroupRunner(old, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    at_consume(runner.consumer, {6: runner.request_stop})
    assert runner.run() == EXIT_OK and _staged(store) and not _finals(store)
    if stray:  # the group's last commit of partition 0 never happened: its last piece is a stray
        keys = [k for k in _staged(store) if "partition=0/" in k]
        pieces = [Layout("out").parse_staging_key("t", 0, k, 1) for k in keys]
        last = max(p for p in pieces if isinstance(p, PieceRef))
        assert broker.committed_offset("g", "t", 0) == last.to_pos
        broker.groups["g"].offsets[("t", 0)] = last.from_pos
    _produce_more(broker, PARTITIONS * PER_PARTITION, PARTITIONS * 10)
    with capture_logs() as logs:
        runner = GroupRunner(new, store=moved_store, decoder=_decoder(),
                             consumer_factory=broker.consumer_factory())
        assert runner.run() == EXIT_OK
    hints = {e.get("hint") for e in logs if "committed while writing to another output" in e["event"]}
    assert hints == {"consumer finish --group-id g --topic t --output s3://bucket/out"}, hints

    finish = FinishRunner(old, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory(),
                          current_topic_id=broker.topic_id, store_of=lambda _bucket: moved_store)
    assert finish.run() == EXIT_OK
    assert _staged(store) == []
    assert _in_both(_only(store, "out"), _only(moved_store, "new")) == _every(PER_PARTITION + 10)


def test_a_run_back_that_cannot_read_the_other_bucket_keeps_every_staged_row_and_says_so() -> None:
    """A group moved to an output in another bucket and back, with partition 0's last piece in the
    old output uncommitted (its commit lost): the run back cannot list the other bucket (access
    denied). It says so and keeps every staged row: nothing is lost, and the piece's records are
    in both outputs, as the warning says they may be."""
    broker, store, moved_store = _broker(), MemoryStore(), MemoryStore()
    old = _config()
    runner = GroupRunner(old, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    at_consume(runner.consumer, {6: runner.request_stop})
    assert runner.run() == EXIT_OK
    keys = [k for k in _staged(store) if "partition=0/" in k]
    refs = [Layout("out").parse_staging_key("t", 0, k, 1) for k in keys]
    last = max(p for p in refs if isinstance(p, PieceRef))
    broker.groups["g"].offsets[("t", 0)] = last.from_pos  # the commit of the last piece was lost
    _produce_more(broker, PARTITIONS * PER_PARTITION, PARTITIONS * 10)
    assert GroupRunner(_config(output="s3://other/new", until_caught_up=True), store=moved_store,
                       decoder=_decoder(), consumer_factory=broker.consumer_factory()).run() == EXIT_OK
    denied = MemoryStore()
    denied.fail_next("list", FatalStorageError("AccessDenied: s3:ListBucket on other"), times=10)
    with capture_logs() as logs:
        back = GroupRunner(_config(until_caught_up=True), store=store, decoder=_decoder(),
                           consumer_factory=broker.consumer_factory(), store_of=lambda _bucket: denied)
        assert back.run() == EXIT_OK
    said = [e for e in logs if str(e["event"]).startswith("the output the group moved to could not be read")]
    assert sorted((e["partition"], e["moved_to"], "AccessDenied" in e["error"]) for e in said) == [
        (p, "s3://other/new", True) for p in range(PARTITIONS)], said
    both = _in_both(_only(store, "out"), _only(moved_store, "new"))
    twice = list(range(last.from_pos, last.to_pos))
    assert both == {0: sorted([*range(PER_PARTITION + 10), *twice]), 1: list(range(PER_PARTITION + 10))}


def test_a_run_back_whose_other_bucket_s3_fails_to_list_stops_then_leaves_out_its_rows() -> None:
    """The same run back, but the other bucket's listing fails with an error that may pass (S3
    unavailable, retries exhausted). Keeping every staged row then put the uncommitted piece's
    records in both outputs, for an outage. The run back stops with S3's status and changes
    nothing; the next one reads the other output and each record is in one of the two."""
    broker, store, moved_store = _broker(), MemoryStore(), MemoryStore()
    old = _config()
    runner = GroupRunner(old, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    at_consume(runner.consumer, {6: runner.request_stop})
    assert runner.run() == EXIT_OK
    refs = [Layout("out").parse_staging_key("t", 0, k, 1) for k in _staged(store) if "partition=0/" in k]
    last = max(p for p in refs if isinstance(p, PieceRef))
    broker.groups["g"].offsets[("t", 0)] = last.from_pos  # the commit of the last piece was lost
    _produce_more(broker, PARTITIONS * PER_PARTITION, PARTITIONS * 10)
    assert GroupRunner(_config(output="s3://other/new", until_caught_up=True), store=moved_store,
                       decoder=_decoder(), consumer_factory=broker.consumer_factory()).run() == EXIT_OK
    moved_store.fail_next("list", TransientStorageError("injected: S3 kept failing (retries exhausted)"),
                          times=100)
    before = dict(store.objects)

    def back() -> int:
        return GroupRunner(_config(until_caught_up=True), store=store, decoder=_decoder(),
                           consumer_factory=broker.consumer_factory(),
                           store_of=lambda _bucket: moved_store).run()

    with capture_logs() as logs:
        assert back() == EXIT_STORAGE
    said = " ".join(str(e.get("error", "")) for e in logs)
    assert "comes back here from s3://other/new, which could not be read" in said, logs
    assert {k: v for k, v in store.objects.items() if "/_moved/" not in k} == {
        k: v for k, v in before.items() if "/_moved/" not in k}
    moved_store.disarm()  # S3 is back
    assert back() == EXIT_OK
    both = _in_both(_only(store, "out"), _only(moved_store, "new"))
    assert both == {p: list(range(PER_PARTITION + 10)) for p in range(PARTITIONS)}


def _listings(store: MemoryStore) -> list[str]:
    """The prefixes ``store`` is listed under from now on, in order."""
    listed: list[str] = []
    plain_list = store.list

    def counted(prefix: str, start_after: str = "") -> list[ObjectInfo]:
        listed.append(prefix)
        return plain_list(prefix, start_after)

    store.list = counted  # type: ignore[method-assign]
    return listed


def test_a_run_back_lists_the_other_output_once_for_all_its_partitions() -> None:
    """Every partition's recovery in an output the group went back to reads the other output's
    ranges; the topic folder there holds all partitions, so one listing serves them all (it was
    one a partition: P listings of the whole folder), with one of its staging and one of its dead
    letters. A listing older than its TTL is made again."""
    broker, store, moved_store = _broker(), MemoryStore(), MemoryStore()
    runner = GroupRunner(_config(), store=store, decoder=_decoder(),
                         consumer_factory=broker.consumer_factory())
    at_consume(runner.consumer, {6: runner.request_stop})
    assert runner.run() == EXIT_OK
    _produce_more(broker, PARTITIONS * PER_PARTITION, PARTITIONS * 10)
    assert GroupRunner(_config(output="s3://other/new", until_caught_up=True), store=moved_store,
                       decoder=_decoder(), consumer_factory=broker.consumer_factory()).run() == EXIT_OK
    listed, here = _listings(moved_store), _listings(store)
    back = GroupRunner(_config(until_caught_up=True), store=store, decoder=_decoder(),
                       consumer_factory=broker.consumer_factory(), store_of=lambda _bucket: moved_store)
    assert back.run() == EXIT_OK
    assert sorted(listed) == ["new/_dead_letters/topic=t/", "new/_staging/topic=t/", "new/topic=t/"], listed
    # and this output's dead letters of each partition once (they were listed twice)
    dead_here = [p for p in here if p.startswith("out/_dead_letters/")]
    assert sorted(dead_here) == [f"out/_dead_letters/topic=t/partition={p}/" for p in range(PARTITIONS)], here

    now = [0.0]
    listings = OtherOutputListings(ttl=30.0, clock=lambda: now[0])
    made: list[int] = []

    def make() -> OutputListing:
        made.append(1)
        return OutputListing((), ())

    for at in (0.0, 29.0, 31.0, 32.0):
        now[0] = at
        listings.get("s3://other/new", "t", make)
    assert len(made) == 2
    listings.get("s3://other/new", "u", make)
    assert len(made) == 3  # another topic: its own listing


def test_verify_with_the_output_the_group_moved_from_counts_both_outputs_files() -> None:
    """After a move and the old output's finish, the new output alone misses the offsets below
    where it began, and so does the old one above its end; verified with the other given
    (``--with-output``), nothing is missing. A row in both is a duplicate, and an output given
    twice is a usage error."""
    broker, store, moved_store = _broker(), MemoryStore(), MemoryStore()
    old, new = _config(), _config(output="s3://other/new", until_caught_up=True)
    runner = GroupRunner(old, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    at_consume(runner.consumer, {6: runner.request_stop})
    assert runner.run() == EXIT_OK
    _produce_more(broker, PARTITIONS * PER_PARTITION, PARTITIONS * 10)
    moved_at = [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)]
    assert GroupRunner(new, store=moved_store, decoder=_decoder(),
                       consumer_factory=broker.consumer_factory()).run() == EXIT_OK
    finish = FinishRunner(old, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory(),
                          current_topic_id=broker.topic_id, store_of=lambda _bucket: moved_store)
    assert finish.run() == EXIT_OK
    committed = {p: PER_PARTITION + 10 for p in range(PARTITIONS)}
    alone = verify(moved_store, "new", "t", committed=committed, workers=2)
    assert not alone.ok and all(r.missing_count for r in alone.partitions), alone.to_text()
    # where the group moved (_moved/) says where the missing offsets are
    assert [n for n in alone.notes if "moved to this output" in n] == [
        f"partition {p}: the group moved to this output at offset {moved} from s3://bucket/out (--output "
        "changed): offsets below it are there. Check both as one with --with-output s3://bucket/out"
        for p, moved in enumerate(moved_at)
    ], alone.to_text()
    both = verify(moved_store, "new", "t", committed=committed, workers=2, with_outputs=[(store, "out")])
    assert both.ok, both.to_text()
    assert "new + s3://" in both.source and both.source.endswith("/out"), both.source
    first = next(k for k in store.objects if k.startswith("out/topic=t/partition=0/"))
    moved_store.objects["new/topic=t/partition=0/t+0+00000000000000000000.parquet"] = store.objects[first]
    twice = verify(moved_store, "new", "t", committed=committed, workers=2, with_outputs=[(store, "out")])
    assert [r.duplicate_count > 0 for r in twice.partitions] == [True, False], twice.to_text()
    with pytest.raises(VerifyError, match="named twice"):
        verify(moved_store, "new", "t", committed=committed, with_outputs=[(moved_store, "new/")])


def _every_record_in_open_files(partition_by: str | None) -> tuple[MemoryBroker, MemoryStore, Config, Config]:
    """A run of the group into ``out`` that read every record and stopped, its files left open;
    (broker, store, that output's config, a bounded one of ``s3://bucket/new``)."""
    broker, store = _broker(), MemoryStore()
    old = _config(partition_by=partition_by, bucket_grace=86400.0)
    new = _config(output="s3://bucket/new", until_caught_up=True, partition_by=partition_by,
                  bucket_grace=86400.0)
    runner = GroupRunner(old, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    at_consume(runner.consumer, {8: runner.request_stop})
    assert runner.run() == EXIT_OK  # everything read: the stop leaves every file open
    return broker, store, old, new


@pytest.mark.parametrize("partition_by", [None, "dt={ts:%Y-%m-%d}/hr={ts:%H}"], ids=["plain", "bucketed"])
def test_files_left_open_in_an_output_the_group_moved_from_with_nothing_new_to_read_are_finished(
    partition_by: str | None,
) -> None:
    """The group moved to a new output when nothing more was to come (or on an idle partition):
    the new output's run reads nothing and so flushed and committed nothing. The group's last
    commit named the old output for ever, and ``consumer finish`` of it refused the open files as
    the group's own. The new output's recovery now commits the position again with an
    "unstaged" note naming the new output, and the finish makes every staged row final."""
    broker, store, old, new = _every_record_in_open_files(partition_by)
    assert [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)] == [PER_PARTITION] * PARTITIONS
    assert _staged(store) and not _finals(store)
    assert GroupRunner(new, store=store, decoder=_decoder(),
                       consumer_factory=broker.consumer_factory()).run() == EXIT_OK
    assert [broker.committed_note("g", "t", p) for p in range(PARTITIONS)] == [
        "kafka-parquet-consumer/1 unstaged s3://bucket/new"] * PARTITIONS
    assert _finish(broker, store, old) == EXIT_OK
    assert _staged(store) == [] and _finals(store) == EVERY
    assert not _only(store, "new").objects or not _finals(_only(store, "new"))


@pytest.mark.parametrize("partition_by", [None, "dt={ts:%Y-%m-%d}/hr={ts:%H}"], ids=["plain", "bucketed"])
def test_a_reset_below_where_the_group_moved_is_refused_and_expired_offsets_go_on_from_there(
    partition_by: str | None,
) -> None:
    """The group moved to a new output at a quiet time: that output holds nothing of its own yet,
    and the records below the move are in the old one. Then an operator moves partition 0's offset
    back to 0 (no note): the new output's run used to export [0, 40) there once more, unseen. Now
    the move's position is kept (``_moved/``): the run stops with status 5 and changes nothing, and
    goes on once the offset is moved back as it says. Later the group's offsets expire: the run
    adopts where the group moved (it started again from auto.offset.reset before). Every offset
    ends in exactly one output."""
    broker, store, old, new = _every_record_in_open_files(partition_by)

    def run_new() -> int:
        runner = GroupRunner(new, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
        return runner.run()

    assert run_new() == EXIT_OK
    moved = {k: v for k, v in store.objects.items() if k.startswith("new/_moved/")}
    assert sorted(moved) == [f"new/_moved/topic=t/partition={p}/{PER_PARTITION:020d}"
                             for p in range(PARTITIONS)]
    assert {json.loads(v)["from"] for v in moved.values()} == {"s3://bucket/out"}
    group = broker.groups["g"]
    group.offsets[("t", 0)] = 0
    group.notes.pop(("t", 0))
    before = dict(store.objects)
    with capture_logs() as logs:
        assert run_new() == EXIT_FATAL
    said = " ".join(str(e.get("error", "")) for e in logs)
    assert f"below {PER_PARTITION}, where the group moved to this output" in said, said
    assert store.objects == before and broker.committed_offset("g", "t", 0) == 0
    group.offsets[("t", 0)] = PER_PARTITION  # as the stop says
    _produce_more(broker, PARTITIONS * PER_PARTITION, PARTITIONS * 10)
    assert run_new() == EXIT_OK
    group.offsets.clear()  # expired
    group.notes.clear()
    _produce_more(broker, PARTITIONS * (PER_PARTITION + 10), PARTITIONS * 10)
    with capture_logs() as logs:
        assert run_new() == EXIT_OK
    assert _finish(broker, store, old) == EXIT_OK
    assert _in_both(_only(store, "out"), _only(store, "new")) == _every(PER_PARTITION + 20)


@pytest.mark.parametrize("partition_by", [None, "dt={ts:%Y-%m-%d}/hr={ts:%H}"], ids=["plain", "bucketed"])
@pytest.mark.parametrize("bucket", ["bucket", "other"], ids=["one-bucket", "two-buckets"])
def test_with_the_offsets_expired_a_run_of_the_output_the_group_moved_from_stops_until_the_new_one_runs(
    partition_by: str | None, bucket: str,
) -> None:
    """The group moved to a new output, which wrote on; then its offsets expired (or the group was
    deleted) and a run of the *old* output came up (a deployment rolled back). It adopted the end
    of its own files and exported again what the new output holds. Now the new output's first
    recovery says so in the old one (``_moved/<position>.away``): that run stops with status 5 and
    changes nothing, naming the new output; a run of the new one adopts its own end. A run back to
    the old output with the group's position (a note) drops the mark."""
    broker, store = _broker(), MemoryStore()
    stores = {"bucket": store, "other": store if bucket == "bucket" else MemoryStore()}
    old = _config(partition_by=partition_by, bucket_grace=86400.0)
    new = _config(output=f"s3://{bucket}/new", until_caught_up=True, partition_by=partition_by,
                  bucket_grace=86400.0)

    def run(config: Config, at: MemoryStore) -> int:
        runner = GroupRunner(config, store=at, decoder=_decoder(), consumer_factory=broker.consumer_factory(),
                             store_of=stores.__getitem__)
        if not config.until_caught_up:
            at_consume(runner.consumer, {8: runner.request_stop})
        return runner.run()

    assert run(old, store) == EXIT_OK
    _produce_more(broker, PARTITIONS * PER_PARTITION, PARTITIONS * 10)
    assert run(new, stores[bucket]) == EXIT_OK
    away = {k: json.loads(v) for k, v in store.objects.items() if k.startswith("out/_moved/")}
    assert sorted(away) == [f"out/_moved/topic=t/partition={p}/{PER_PARTITION:020d}.away"
                            for p in range(PARTITIONS)]
    assert {a["to"] for a in away.values()} == {f"s3://{bucket}/new"}
    broker.groups["g"].offsets.clear()  # expired
    broker.groups["g"].notes.clear()
    before = dict(store.objects)
    with capture_logs() as logs:
        assert run(old, store) == EXIT_FATAL
    said = " ".join(str(e.get("error", "")) for e in logs)
    assert f"moved from this output to s3://{bucket}/new at {PER_PARTITION}" in said, said
    assert store.objects == before
    assert run(new, stores[bucket]) == EXIT_OK
    assert [broker.committed_offset("g", "t", p) for p in range(PARTITIONS)] == [PER_PARTITION + 10] * 2
    assert run(old, store) == EXIT_OK  # back, with the group's position: the mark goes
    assert not [k for k in store.objects if k.startswith("out/") and k.endswith(".away")]
    assert run(replace(old, until_caught_up=True), store) == EXIT_OK
    assert not [k for s in stores.values() for k in s.objects if "/_staging/" in k]
    assert _in_both(_only(store, "out"), _only(stores[bucket], "new")) == _every(PER_PARTITION + 10)


@pytest.mark.parametrize(("partition_by", "deleted"), [
    (None, "newest-piece"), (None, "everything"),
    ("dt={ts:%Y-%m-%d}/hr={ts:%H}", "newest-piece"), ("dt={ts:%Y-%m-%d}/hr={ts:%H}", "whole-file"),
    ("dt={ts:%Y-%m-%d}/hr={ts:%H}", "everything"),
], ids=["plain-newest-piece", "plain-everything", "bucketed-newest-piece", "bucketed-whole-file",
        "bucketed-everything"])  # the plain layout has one file a partition: its whole file is everything
def test_a_clean_up_of_an_output_the_group_left_stops_its_finish_until_restored(
    partition_by: str | None, deleted: str,
) -> None:
    """The group moved with its files open, and a clean-up then deleted staged objects of the old
    output: partition 0's newest piece, the whole of one of its bucket files (the flush's others
    still reaching the position), or all it staged. The finish took its positions from what was
    left, and exported the rest as if nothing were missing: those rows were in no file, and it
    said nothing (found by tests/unit/test_group_history.py once it moved --output). The new
    output's first recovery keeps the group's note where it left (``_moved/<M>.away``), and the
    finish checks the open files against it: it stops (status 5, nothing changed) and says what a
    finish can do. Restored, it finishes every offset into one output; run again, it does nothing."""
    broker, store, old, new = _every_record_in_open_files(partition_by)
    runner = GroupRunner(new, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    assert runner.run() == EXIT_OK
    layout = Layout("out")
    refs = [r for k in _staged(store) if "partition=0/" in k
            if isinstance(r := layout.parse_staging_key("t", 0, k, 1), PieceRef)]
    newest = max(refs, key=lambda r: (r.to_pos, r.bucket))
    if deleted == "newest-piece":
        doomed = [r.key for r in refs if r.to_pos == newest.to_pos and r.bucket == newest.bucket]
    elif deleted == "whole-file":
        doomed = [r.key for r in refs if (r.bucket, r.file_start) == (newest.bucket, newest.file_start)]
    else:
        doomed = [r.key for r in refs]
    gone = {k: store.objects.pop(k) for k in doomed}
    before = dict(store.objects)
    with capture_logs() as logs:
        assert _finish(broker, store, old) == EXIT_FATAL
    assert store.objects == before
    said = str(next(e["error"] for e in logs if e["event"] == "stopped: IntegrityError"))
    assert "This is `consumer finish` of an output the group left" in said, said
    assert f"out/_moved/topic=t/partition=0/{PER_PARTITION:020d}.away" in said, said
    store.objects.update(gone)  # restored (a versioned bucket)
    assert _finish(broker, store, old) == EXIT_OK
    assert _staged(store) == []
    assert _in_both(_only(store, "out"), _only(store, "new")) == _every(PER_PARTITION)
    after = dict(store.objects)
    assert _finish(broker, store, old) == EXIT_OK  # nothing staged: each partition checked, as done
    assert store.objects == after


@pytest.mark.parametrize("partition_by", [None, "dt={ts:%Y-%m-%d}/hr={ts:%H}"], ids=["plain", "bucketed"])
@pytest.mark.parametrize("cleaned_up", [False, True], ids=["run-again", "cleaned-up-then-run-again"])
def test_a_finish_of_an_output_the_group_left_killed_at_any_store_request_finishes_when_run_again(
    partition_by: str | None, cleaned_up: bool,
) -> None:
    """The finish of an output the group moved from, with its files open there, is killed before
    each of its store requests in turn. Its ``.away`` objects say "staged", then "finishing" (after
    recovery's checks, before the first roll, naming the bucket files it rolls), then "rolled".
    Run again, it finishes every offset into exactly one of the two outputs, whether the kill came
    before, between or after its rolls (a finish cut short after its rolls says "finishing" with
    nothing staged, and is taken for done only then), and a third run changes nothing.

    ``cleaned_up``: two faults in a row, a clean-up deleting everything staged there after the
    kill. Run again, the finish stops (status 5, changing nothing but what ``.away`` objects say
    of partitions it did finish) until the operator restores them, or loses nothing. Under
    --partition-by a finish killed after one bucket file's roll wrote the ``_rolled/`` high-water,
    whose other files were then deleted, took the partition for finished: the rows of the others
    were in no file, exit 0."""
    start_broker, start_store, old, new = _every_record_in_open_files(partition_by)
    assert GroupRunner(new, store=start_store, decoder=_decoder(),
                       consumer_factory=start_broker.consumer_factory()).run() == EXIT_OK

    def moved() -> tuple[MemoryBroker, MemoryStore]:  # the same state for each kill: built once
        return copy.deepcopy((start_broker, start_store))

    broker, store = moved()
    before = sum(store.stats.requests.values())
    assert _finish(broker, store, old) == EXIT_OK
    requests = sum(store.stats.requests.values()) - before
    for at in range(1, requests + 1):
        broker, store = moved()
        store.on_op = crash_at_request(at)
        with pytest.raises(Crash):
            _finish(broker, store, old)
        store.on_op = None
        gone = {key: store.objects.pop(key) for key in _staged(store)} if cleaned_up else {}
        after = dict(store.objects)
        status = _finish(broker, store, old)
        if status == EXIT_FATAL and gone:  # said loudly: the operator restores them (a versioned bucket)
            changed = {k for k in {*after, *store.objects} if after.get(k) != store.objects.get(k)}
            assert all("/_moved/" in k and k.endswith(".away") for k in changed), (at, changed)
            store.objects.update(gone)
            status = _finish(broker, store, old)
        assert status == EXIT_OK, at
        assert _staged(store) == [], at
        assert _in_both(_only(store, "out"), _only(store, "new")) == _every(PER_PARTITION), at
        after = dict(store.objects)
        assert _finish(broker, store, old) == EXIT_OK and store.objects == after, at


@pytest.mark.parametrize("partition_by", [None, "dt={ts:%Y-%m-%d}/hr={ts:%H}"], ids=["plain", "bucketed"])
@pytest.mark.parametrize("finished", [False, True], ids=["cleaned-up", "finished-then-cleaned-up"])
def test_a_run_back_to_an_output_whose_staged_rows_were_deleted_since_the_group_left_stops(
    partition_by: str | None, finished: bool,
) -> None:
    """The group moved with its files open, a clean-up deleted the old output's newest staged
    piece of partition 0, and the group came back (a rolled-back deployment) with nothing new to
    read. The run back went on from the group's position and those rows were in no file, without
    a word (found by tests/unit/test_group_history.py once it moved --output). It stops now (status
    5, nothing of the partition changed), naming where the group left; restored, it goes on, and
    every offset is in one of the two outputs. After a `consumer finish` of the old output its
    files are final, and the run back goes on at once (the finish says so in ``.away``)."""
    broker, store, old, new = _every_record_in_open_files(partition_by)
    runner = GroupRunner(new, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    assert runner.run() == EXIT_OK
    back = replace(old, until_caught_up=True)
    if finished:
        assert _finish(broker, store, old) == EXIT_OK
        assert _run(broker, store, back) == EXIT_OK
        assert _in_both(_only(store, "out"), _only(store, "new")) == _every(PER_PARTITION)
        return
    layout = Layout("out")
    refs = [r for k in _staged(store) if "partition=0/" in k
            if isinstance(r := layout.parse_staging_key("t", 0, k, 1), PieceRef)]
    newest = max(refs, key=lambda r: (r.to_pos, r.bucket))
    gone = {newest.key: store.objects.pop(newest.key)}
    before = {k: v for k, v in store.objects.items() if "/partition=0/" in k}
    with capture_logs() as logs:
        assert _run(broker, store, back) == EXIT_FATAL
    assert {k: v for k, v in store.objects.items() if "/partition=0/" in k and "/_moved/" not in k} == {
        k: v for k, v in before.items() if "/_moved/" not in k}
    said = str(next(e["error"] for e in logs if e["event"] == "stopped: IntegrityError"))
    assert f"which it left at {PER_PARTITION} with the rows below staged here" in said, said
    store.objects.update(gone)  # restored (a versioned bucket)
    assert _run(broker, store, back) == EXIT_OK
    assert _in_both(_only(store, "out"), _only(store, "new")) == _every(PER_PARTITION)


def test_a_move_whose_old_output_cannot_be_written_says_so_and_goes_on() -> None:
    """The new output's first recovery tells the old one, in another bucket, of the move
    (``.away``); this consumer may not write there (access denied). The move goes on, and the
    warning says what is then not guarded (a run of the old output after the offsets expire)."""
    broker, store, _old, _new = _every_record_in_open_files(None)
    moved_store = MemoryStore()
    store.fail_next("put_if_absent", FatalStorageError("AccessDenied: s3:PutObject on bucket"), times=2)
    with capture_logs() as logs:
        runner = GroupRunner(_config(output="s3://other/new", until_caught_up=True), store=moved_store,
                             decoder=_decoder(), consumer_factory=broker.consumer_factory(),
                             store_of=lambda _bucket: store)
        assert runner.run() == EXIT_OK
    said = [e for e in logs
            if str(e["event"]).startswith("the output the group moved from could not be told")]
    assert sorted((e["partition"], e["moved_from"], "AccessDenied" in e["error"]) for e in said) == [
        (p, "s3://bucket/out", True) for p in range(PARTITIONS)], said
    assert not [k for k in store.objects if "/_moved/" in k]
    assert [broker.committed_note("g", "t", p) for p in range(PARTITIONS)] == [
        "kafka-parquet-consumer/1 unstaged s3://other/new"] * PARTITIONS


def test_a_move_whose_old_output_s3_fails_to_mark_stops_and_the_next_run_marks_it() -> None:
    """S3 unavailable (retries exhausted) when the new output's first recovery tells the old one,
    in another bucket, of the move: the mark is all that says the old output's open files held rows
    once the group's note names the new output (a clean-up of them went unseen by ``consumer
    finish``, which then found nothing to finish). The recovery stops with S3's status, its note
    still naming the old output; the next run writes the mark and goes on."""
    broker, store, _old, _new = _every_record_in_open_files(None)
    moved_store = MemoryStore()
    store.fail_next("put_if_absent", TransientStorageError("injected: S3 kept failing (retries exhausted)"))

    def run() -> int:
        return GroupRunner(_config(output="s3://other/new", until_caught_up=True), store=moved_store,
                           decoder=_decoder(), consumer_factory=broker.consumer_factory(),
                           store_of=lambda _bucket: store).run()

    with capture_logs() as logs:
        assert run() == EXIT_STORAGE
    said = " ".join(str(e.get("error", "")) for e in logs)
    assert "moved here from s3://bucket/out at" in said and "--reset-offsets" in said, logs
    notes = [broker.committed_note("g", "t", p) for p in range(PARTITIONS)]
    assert "kafka-parquet-consumer/1 staged s3://bucket/out" in notes, notes
    assert run() == EXIT_OK
    marks = [k for k in store.objects if k.startswith("out/_moved/") and k.endswith(".away")]
    assert len(marks) == PARTITIONS, marks
    assert [broker.committed_note("g", "t", p) for p in range(PARTITIONS)] == [
        "kafka-parquet-consumer/1 unstaged s3://other/new"] * PARTITIONS


def test_a_reset_forwards_is_kept_for_expired_offsets_until_the_offset_goes_back_below_it() -> None:
    """An operator's reset forwards with no note, on a partition with nothing more to read: the
    position is kept (``_moved/<position>.unnoted``), so that offsets expiring before the next
    flush adopt it, not what the files here reach (which read the skipped records again; with a
    move as well, those of the other output). Moving the offset back below it later (to export the
    skipped records after all) is not refused, and deletes it: else expired offsets would adopt it
    again and skip what the group had not read back yet."""
    broker, store, _old, _new = _every_record_in_open_files(None)
    _produce_more(broker, PARTITIONS * PER_PARTITION, PARTITIONS * 20)
    group = broker.groups["g"]
    group.offsets[("t", 0)] = PER_PARTITION + 20  # --to-latest: [40, 60) skipped
    group.notes.pop(("t", 0))
    assert GroupRunner(_config(until_caught_up=True), store=store, decoder=_decoder(),
                       consumer_factory=broker.consumer_factory()).run() == EXIT_OK
    kept = f"out/_moved/topic=t/partition=0/{PER_PARTITION + 20:020d}.unnoted"
    assert [k for k in store.objects if "/_moved/" in k] == [kept]
    group.offsets[("t", 0)] = PER_PARTITION  # back, to export them after all
    group.notes.pop(("t", 0))
    runner = GroupRunner(_config(batch_size=4), store=store, decoder=_decoder(),
                         consumer_factory=broker.consumer_factory())
    at_consume(runner.consumer, {2: runner.request_stop})
    assert runner.run() == EXIT_OK
    assert kept not in store.objects
    reached = broker.committed_offset("g", "t", 0)
    assert reached is not None and PER_PARTITION < reached < PER_PARTITION + 20
    group.offsets.clear()  # expired
    group.notes.clear()
    assert GroupRunner(_config(until_caught_up=True), store=store, decoder=_decoder(),
                       consumer_factory=broker.consumer_factory()).run() == EXIT_OK
    assert _finals(store) == _every(PER_PARTITION + 20)


def test_an_output_the_group_still_commits_to_is_refused() -> None:
    """The group moved, but one partition's last commit still names this output (the new run has
    not committed it yet): refused, nothing changed."""
    broker, store = _broker(), MemoryStore()
    old = _config()
    runner = GroupRunner(old, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    at_consume(runner.consumer, {6: runner.request_stop})
    assert runner.run() == EXIT_OK
    _produce_more(broker, PARTITIONS * PER_PARTITION, PARTITIONS * 10)
    runner = GroupRunner(_config(output="s3://bucket/new", until_caught_up=True), store=store,
                         decoder=_decoder(), consumer_factory=broker.consumer_factory())
    assert runner.run() == EXIT_OK
    broker.groups["g"].notes[("t", 1)] = broker.committed_note("g", "t", 1).replace("/new", "/out")
    staged = sorted(_staged(store))
    said = _refusal(broker, store, old)
    assert "the group's last commit of t[1] was to this output" in said, said
    assert sorted(_staged(store)) == staged


def test_an_old_file_is_cut_where_the_other_output_holds_the_rest_of_what_is_staged() -> None:
    layout = Layout("out")
    refs: list[PieceRef | RollMarker] = [
        RollMarker(0, 100, layout.roll_marker_key("t", 0, 0, 100)),
        *(PieceRef(100, a, b, layout.piece_key("t", 0, 100, a, b)) for a, b in [(100, 120), (120, 150)])]
    forever = 10**9
    assert cut_at(refs, [(120, forever)]) == 120  # a piece past the last commit: left out
    assert cut_at(refs, [(150, forever)]) == 150 and cut_at(refs, []) == 150  # all kept
    assert cut_at(refs, [(110, forever)]) == 120  # inside a piece (a reset as it moved): kept whole
    assert cut_at(refs, [(90, forever)]) == 100  # below the open file: the decided roll still finishes
    assert cut_at(refs, [(0, 200)]) == 0  # the other holds all of it (a group moved there and back)
    assert cut_at(refs, [(100, 130), (140, 200)]) == 150  # a gap in the other: all kept


def test_dead_letter_objects_are_cut_where_the_other_output_holds_their_records() -> None:
    """A run back cuts this output's dead-letter objects as it cuts pieces: a flush of bad records
    only left [0, 4) here, uncommitted, and the group committed 3 in the other output."""
    forever = 10**9
    assert cut_at([], [(0, 3)], 3, [(0, 4)]) == 0  # left out: [0, 3) is there, [3, 4) is read again
    assert cut_at([], [(2, forever)], 3, [(0, 4)]) == 3  # the other lacks its start: kept
    assert cut_at([], [(2, forever)], 4, [(0, 2), (2, 4)]) == 2  # [0, 2) committed here before the move
    assert cut_at([], [], 4, [(0, 2), (2, 4)]) == 4  # the other holds none: all kept
    layout = Layout("out")
    refs: list[PieceRef | RollMarker] = [
        PieceRef(100, a, b, layout.piece_key("t", 0, 100, a, b)) for a, b in [(100, 120), (120, 150)]]
    # a dead-letter object's bounds inside a staged piece are no cut: the piece is kept whole
    assert cut_at(refs, [(110, forever)], None, [(110, 112)]) == 120
    assert cut_at(refs, [(90, forever)], None, [(90, 100)]) == 90  # below the file: left out with it


def test_the_other_output_s_dead_letters_count_as_held() -> None:
    """A flush of bad records only leaves a dead-letter object there and no file: its records are
    held there all the same (a run back left its own rows of that range in both outputs)."""
    store, layout = MemoryStore(), Layout("new")
    store.put_if_absent(layout.dead_letter_key("t", 0, 0, 3), b"{}\n")
    store.put_if_absent(layout.dead_letter_key("t", 0, 7, 9), b"{}\n")
    store.put_if_absent(layout.dead_letter_key("t", 1, 0, 5), b"{}\n")
    store.put_if_absent(layout.piece_key("t", 0, 3, 3, 7), b"not read")
    assert held_ranges(store, layout, "t", {0: 8}) == {0: [(3, 7), (0, 3), (7, 9)]}
    assert held_ranges(store, layout, "t", {0: 7, 1: 1}) == {0: [(3, 7), (0, 3)], 1: [(0, 5)]}


def test_rows_kept_below_the_cut_that_the_other_output_holds_too_are_named() -> None:
    layout = Layout("out")
    refs: list[PieceRef | RollMarker] = [
        RollMarker(0, 100, layout.roll_marker_key("t", 0, 0, 100)),
        *(PieceRef(100, a, b, layout.piece_key("t", 0, 100, a, b)) for a, b in [(100, 120), (120, 150)])]
    forever = 10**9
    assert held_in_both(refs, [(110, forever)], 120) == [(110, 120)]  # the piece it begins inside
    assert held_in_both(refs, [(120, forever)], 120) == []  # at a boundary: left out, in one output
    assert held_in_both(refs, [(105, 112), (115, 130)], 150) == [(105, 112), (115, 130)]
    assert held_in_both(refs, [(100, 125), (125, 140)], 150) == [(100, 140)]  # merged
    assert held_in_both(refs, [(90, 100)], 100) == []  # below the open file: a decided roll's rows


def test_ranges_hold_a_span_only_without_a_gap() -> None:
    assert holds_all([(0, 10), (10, 20)], 5, 20) and holds_all([(0, 30), (5, 10)], 0, 30)
    assert not holds_all([(0, 10), (11, 20)], 0, 20) and not holds_all([(5, 20)], 0, 20)
    assert holds_all([], 7, 7)


def test_a_move_and_a_reset_into_a_piece_at_once_leaves_its_rows_in_both_outputs_and_says_so() -> None:
    """--output changed and partition 0's offset moved back into its last piece at once (no note
    says the group moved): the new output exports from there, and the old one's piece cannot be
    cut inside. Its rows past that offset are in both outputs, and the finish names them (before,
    it said nothing); `consumer verify --with-output` counts them as duplicates."""
    broker, store, old, new = _every_record_in_open_files(None)
    back = PER_PARTITION - 5
    broker.reset_offsets("g", "t", 0, back)
    runner = GroupRunner(new, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    assert runner.run() == EXIT_OK
    with capture_logs() as logs:
        assert _finish(broker, store, old) == EXIT_OK
    said = [e for e in logs if "in_both" in e]
    assert [(e["partition"], e["in_both"]) for e in said] == [("t[0]", [[back, PER_PARTITION]])], said
    both = _in_both(_only(store, "out"), _only(store, "new"))
    assert both[0] == sorted([*range(PER_PARTITION), *range(back, PER_PARTITION)]) and both[1] == _every(
        PER_PARTITION)[1]
    report = verify(store, "new", "t", committed={p: PER_PARTITION for p in range(PARTITIONS)}, workers=2,
                    with_outputs=[(store, "out")])
    assert [r.duplicate_count for r in report.partitions] == [5, 0], report.to_text()


def test_an_output_is_the_same_written_with_a_trailing_slash() -> None:
    assert same_output("s3://bkt/p/", "s3://bkt/p") and not same_output("s3://bkt/p2", "s3://bkt/p")
    assert not same_output("sha256:" + "0" * 64, "s3://bkt/p")


def test_a_finish_under_another_partition_by_stops_and_changes_nothing_then_the_right_one_finishes() -> None:
    """Open files hold committed rows only their own layout can finish (consumer.recovery
    .layout_mismatch): a finish with --partition-by left out stops, naming the flag, and changes
    nothing; with the template that wrote them, it finishes them."""
    broker, store = _broker(), MemoryStore()
    bucketed = _config(partition_by="dt={ts:%Y-%m-%d}/hr={ts:%H}", bucket_grace=86400.0)
    _staged_then_deleted(broker, store, bucketed)
    before = dict(store.objects)
    with capture_logs() as logs:
        assert _finish(broker, store, _config()) != EXIT_OK
    said = next(e["error"] for e in logs if str(e["event"]).startswith("stopped: "))
    assert "--partition-by that wrote them" in said, said
    assert store.objects == before
    assert _finish(broker, store, bucketed) == EXIT_OK
    assert _staged(store) == [] and _finals(store) == EVERY


def test_an_output_left_and_returned_to_is_cut_where_the_other_holds_the_rest() -> None:
    """A group moved back and forth (a rolling deployment between two outputs, undone and done
    again): the new output holds files from before the old one's open file as well as after it.
    Cut where the new output's earliest file begins, the open file's rows past its first piece
    were in neither output (the first version of the cut did that)."""
    broker, store = _broker(), MemoryStore()
    old, new = _config(), _config(output="s3://bucket/new", until_caught_up=True)

    def open_run(config: Config) -> None:
        runner = GroupRunner(config, store=store, decoder=_decoder(),
                             consumer_factory=broker.consumer_factory())
        at_consume(runner.consumer, {6: runner.request_stop})
        assert runner.run() == EXIT_OK

    def bounded_run(config: Config) -> None:
        assert GroupRunner(config, store=store, decoder=_decoder(),
                           consumer_factory=broker.consumer_factory()).run() == EXIT_OK

    total = PARTITIONS * PER_PARTITION
    open_run(old)  # old: [0, 40) open
    for step, run in enumerate([lambda: bounded_run(new), lambda: open_run(old), lambda: bounded_run(new)]):
        _produce_more(broker, total, PARTITIONS * 30)  # 30 more a partition each time
        total += PARTITIONS * 30
        run()
        assert step != 1 or _staged(store)  # old: [70, 100) open again
    finish = FinishRunner(old, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory(),
                          current_topic_id=broker.topic_id)
    assert finish.run() == EXIT_OK
    assert _staged(store) == []
    assert _in_both(_only(store, "out"), _only(store, "new")) == _every(PER_PARTITION + 90)


def test_an_output_too_long_for_a_commit_note_is_finished_at_the_group_s_position() -> None:
    """An output URL over 512 characters is named in commit notes by its hash: the new output's
    run cannot name it in its hint, and the finish cannot list the new output; it cuts at the
    group's committed position instead, which keeps every staged row."""
    broker, store = _broker(), MemoryStore()
    old = _config(output="s3://bucket/" + "o" * 600)
    runner = GroupRunner(old, store=store, decoder=_decoder(), consumer_factory=broker.consumer_factory())
    at_consume(runner.consumer, {6: runner.request_stop})
    assert runner.run() == EXIT_OK
    _produce_more(broker, PARTITIONS * PER_PARTITION, PARTITIONS * 10)
    with capture_logs() as logs:
        assert GroupRunner(_config(output="s3://bucket/new", until_caught_up=True), store=store,
                           decoder=_decoder(), consumer_factory=broker.consumer_factory()).run() == EXIT_OK
    hints = {e.get("hint") for e in logs if "committed while writing to another output" in e["event"]}
    assert hints == {"consumer finish --group-id g --topic t --output <the earlier s3:// output>"}, hints
    assert _finish(broker, store, old) == EXIT_OK
    assert _in_both(_only(store, "o" * 600), _only(store, "new")) == _every(PER_PARTITION + 10)


def _recording_commits(broker: MemoryBroker) -> list[tuple[int | None, str]]:
    """Every commit of partition 0 from now on, (offset, note) in order, after the group's state
    now; for :func:`_lose_the_last_commit`."""
    seen: list[tuple[int | None, str]] = [
        (broker.committed_offset("g", "t", 0), broker.committed_note("g", "t", 0))]
    commit = broker._commit

    def recorded(consumer: Any, offsets: Any) -> None:
        commit(consumer, offsets)
        seen.extend((int(tp.offset), tp.metadata or "") for tp in offsets
                    if (tp.topic, tp.partition) == ("t", 0))

    broker._commit = recorded  # type: ignore[method-assign]
    return seen


def _lose_the_last_commit(broker: MemoryBroker, store: MemoryStore, prefix: str, earlier: set[str],
                          commits: list[tuple[int | None, str]]) -> bool:
    """Partition 0's newest staged piece in ``prefix``, uploaded by the run just over (not in
    ``earlier``), stays, but the commit that followed it is undone, as a crash between the upload
    and the commit leaves it: the group's position and note go back to the commit before (from
    ``commits``). False when there is no such piece (the run made its files final, or uploaded
    nothing: a commit of an earlier run is not this one's to lose)."""
    keys = [k for k in store.objects if k.startswith(f"{prefix}/_staging/topic=t/partition=0/")]
    refs = [Layout(prefix).parse_staging_key("t", 0, k, 1) for k in keys]
    pieces = [p for p in refs if isinstance(p, PieceRef)]
    newest = max(pieces, key=lambda p: p.to_pos, default=None)
    if newest is None or newest.key in earlier or broker.committed_offset("g", "t", 0) != newest.to_pos:
        return False
    while len(commits) > 1 and commits[-1][0] == newest.to_pos:
        commits.pop()
    group = broker.groups["g"]
    offset, note = commits[-1]
    if offset is None:
        group.offsets.pop(("t", 0), None)
        group.notes.pop(("t", 0), None)
    else:
        group.offsets[("t", 0)], group.notes[("t", 0)] = offset, note
    return True


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["out", "new"]), st.booleans(), st.booleans(),
                                st.sampled_from(["", "latest", "back", "expire"]), st.booleans()),
                      min_size=1, max_size=5))
# finish: the file written again; a run back
@example(steps=[("new", False, True, "", False), ("out", False, False, "", False)])
@example(steps=[("new", False, True, "", False), ("out", False, False, "", False),
                ("new", False, False, "", False)])
# moved with nothing new to read: the group's last commit named the old output for ever (or nothing,
# after a reset)
@example(steps=[("out", False, False, "", True), ("new", False, False, "", False)])
@example(steps=[("out", False, False, "latest", True), ("new", False, False, "", True)])
# a lost commit after a run that uploaded nothing: the property's own history was wrong (a commit of
# an earlier run undone, with this output's note)
@example(steps=[("new", False, False, "", True), ("out", False, False, "", True),
                ("new", False, True, "", False)])
# a reset backwards below a move, and offsets expired after one, with nothing final here above
@example(steps=[("new", False, False, "back", True)])
@example(steps=[("new", False, False, "expire", True)])
# a reset forwards (no note) with a move, then offsets expired: adopted from what this output held
@example(steps=[("new", True, False, "latest", True), ("out", False, False, "expire", False)])
@example(steps=[("out", True, False, "", False), ("out", False, False, "latest", True),
                ("new", False, False, "expire", False)])
@pytest.mark.parametrize("partition_by", [None, "dt={ts:%Y-%m-%d}/hr={ts:%H}"], ids=["plain", "bucketed"])
@pytest.mark.parametrize("buckets", ["one-bucket", "two-buckets"])
def test_a_group_moved_between_two_outputs_in_any_order_ends_with_every_offset_in_exactly_one(
    partition_by: str | None, buckets: str, steps: list[tuple[str, bool, bool, str, bool]],
) -> None:
    """Runs of one group alternate between two outputs in any order, each stopping with its files
    open or catching up (which makes them final), 10 more records a partition before each, or none
    (a quiet time: the run of a new output has nothing to read). After some, the commit of
    partition 0's last piece is lost (a crash between its upload and its commit), and after some an
    operator moves partition 1's offset to the end of its log (``--reset-offsets --to-latest``: no
    note), skipping 10 records or more; or moves partition 0's back to 0 (``--to-earliest``), or
    the group's offsets expire, and runs the same output again at once: a stop (status 5) is
    followed as it says, the offset moved back where it was. Then the output of the last run is
    caught up, and
    ``consumer finish`` of the other makes its open files final: every offset not skipped is in
    exactly one of the two outputs, and no skipped one in any. Found by this property: a run going
    back to an output whose staged rows the other holds too finished them as a reset forwards
    finishes what is staged (in both outputs: now left out); and a move at a quiet time left the
    group's last commit naming the old output, or nothing after a reset, so the finish refused
    (now the recovery commits the position again with an "unstaged" note); and a reset backwards
    below a move, or offsets expired after one, while the output moved to held no final file above
    the position, exported the other output's records there once more (now ``_moved/`` keeps the
    move's position). The two outputs are in one bucket, or each in its own (read through
    ``store_of``, as the CLI's). Offsets that expire before a run of *another* output are not
    drawn here: a move with a reset at once leaves no note to say the group moved (what a move
    with a note does is tested in its own test)."""
    broker = _broker()
    one = MemoryStore()
    stores = {"out": one, "new": one if buckets == "one-bucket" else MemoryStore()}
    bucket_of = {"out": "bucket", "new": "bucket" if buckets == "one-bucket" else "other"}
    by_bucket = {bucket_of[o]: stores[o] for o in stores}
    total = PARTITIONS * PER_PARTITION
    skipped: set[int] = set()  # of partition 1
    commits = _recording_commits(broker)
    first, last = ("out", False, False, "", False), (steps[-1][0], True, False, "", True)
    expired = False

    def run(prefix: str, bounded: bool) -> int:
        config = _config(output=f"s3://{bucket_of[prefix]}/{prefix}", until_caught_up=bounded,
                         partition_by=partition_by, bucket_grace=86400.0)
        runner = GroupRunner(config, store=stores[prefix], decoder=_decoder(),
                             consumer_factory=broker.consumer_factory(), store_of=by_bucket.__getitem__)
        if not bounded:
            at_consume(runner.consumer, {6: runner.request_stop})
        return runner.run()

    for prefix, bounded, lost, reset, quiet in [first, *steps, last]:
        earlier = set(stores[prefix].objects)
        assert run(prefix, bounded) == EXIT_OK
        if lost:
            _lose_the_last_commit(broker, stores[prefix], prefix, earlier, commits)
        expired |= reset == "expire"
        if reset in ("back", "expire"):
            group = broker.groups["g"]
            was = dict(group.offsets), dict(group.notes)
            if reset == "back":
                group.offsets[("t", 0)] = 0
                group.notes.pop(("t", 0), None)
            else:
                group.offsets.clear()
                group.notes.clear()
            outcome = run(prefix, False)
            assert outcome in (EXIT_OK, EXIT_FATAL) and (reset, outcome) != ("expire", EXIT_FATAL)
            if outcome == EXIT_FATAL:  # refused, nothing changed: the offset goes back as it says
                group.offsets.update(was[0])
                group.notes.update(was[1])
            commits.append((group.offsets.get(("t", 0)), group.notes.get(("t", 0), "")))
        if reset == "latest":
            _produce_more(broker, total, PARTITIONS * 10)
            total += PARTITIONS * 10
            at = broker.committed_offset("g", "t", 1)
            assert at is not None
            skipped |= set(range(at, total // PARTITIONS))
            broker.groups["g"].offsets[("t", 1)] = total // PARTITIONS
            broker.groups["g"].notes.pop(("t", 1), None)
        if not quiet:
            _produce_more(broker, total, PARTITIONS * 10)
            total += PARTITIONS * 10
    other = "new" if steps[-1][0] == "out" else "out"
    if [k for k in stores[other].objects if k.startswith(f"{other}/_staging/")]:
        finish = _config(output=f"s3://{bucket_of[other]}/{other}", partition_by=partition_by,
                         bucket_grace=86400.0)
        runner = FinishRunner(finish, store=stores[other], decoder=_decoder(),
                              consumer_factory=broker.consumer_factory(), current_topic_id=broker.topic_id,
                              store_of=by_bucket.__getitem__)
        assert runner.run() == EXIT_OK
    assert not [k for s in stores.values() for k in s.objects if "/_staging/" in k]
    every = _every(total // PARTITIONS)
    found = _in_both(_only(stores["out"], "out"), _only(stores["new"], "new"))
    if expired:  # S3 keeps no trace of a skip: with the offsets expired before a flush past it,
        # the records skipped are exported after all (once), as from a committed position below
        skipped -= set(found.get(1, []))
    every[1] = [o for o in every[1] if o not in skipped]
    assert found == every
    # `consumer verify` of either output with the other given (--with-output) finds the same
    report = verify(stores["new"], "new", "t", committed={p: total // PARTITIONS for p in every},
                    partition_by=partition_by, workers=2, with_outputs=[(stores["out"], "out")])
    assert [(r.duplicate_count, r.missing_count) for r in report.partitions] == [(0, 0), (0, len(skipped))], \
        report.to_text()
    assert not report.bad_files and not report.staging_objects, report.to_text()
