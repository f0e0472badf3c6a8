"""Staged rows deleted behind the consumer's back: a lifecycle rule expiring ``_staging/``, a
clean-up of "temporary" objects, a restore of an older copy of the bucket. The newest staged
pieces are gone while the group's committed position still says their rows are durable, so
nothing in S3 reaches that position any more. Recovery used to read that as an operator's reset
forwards and go on from the committed position: the records of the deleted pieces were in no file,
with no warning at all when the whole staging was gone, and the run exited 0.

Every commit now says in the offset's metadata what holds the rows below it
(consumer.positions.commit_note); an operator's reset writes none. These tests run on the memory
broker, which keeps that metadata as Kafka does and drops it on a reset as
``kafka-consumer-groups`` does; tests/integration/test_operator_actions.py does it on the stack."""

from __future__ import annotations

import io
from typing import Any

import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from consumer.errors import EXIT_FATAL, EXIT_STORAGE
from consumer.positions import NOTE_MAGIC, commit_note, note_output, parse_note
from consumer.samples import encode_raw, make_record, parsed_schema
from consumer.testing import (
    MemoryBroker,
    MemoryStore,
    at_consume,
    memory_runner,
    page_view_broker,
)


def _produce(broker: MemoryBroker, first: int, n: int) -> None:
    schema = parsed_schema("page_view")
    for i in range(first, first + n):
        broker.produce("t", encode_raw(schema, make_record("page_view", i)), key=b"k")


def _run(broker: MemoryBroker, store: MemoryStore, **cfg: Any) -> tuple[int, list[dict[str, Any]], Any]:
    runner = memory_runner(broker, store, **{"row_group_rows": 10, "until_caught_up": True, **cfg})
    with capture_logs() as logs:
        code = runner.run()
    return code, logs, runner


def _stage(broker: MemoryBroker, store: MemoryStore, polls: int) -> None:
    """Run until ``polls`` consumes are done (their row groups durable in the open file), then
    SIGTERM: the file stays open."""
    runner = memory_runner(broker, store, row_group_rows=10)
    at_consume(runner.consumer, {polls: runner.request_stop})
    assert runner.run() == 0


def _staged(store: MemoryStore) -> list[str]:
    return sorted(k for k in store.objects if "/_staging/" in k and k.endswith(".piece"))


def _finals(store: MemoryStore, prefix: str = "out/") -> dict[str, bytes]:
    return {k: v for k, v in store.objects.items()
            if k.startswith(prefix) and k.endswith(".parquet") and "/_" not in k}  # fmt: skip


def _offsets(store: MemoryStore, prefix: str = "out/") -> list[int]:
    tables = [pq.read_table(io.BytesIO(data)) for data in _finals(store, prefix).values()]
    return sorted(o for t in tables for o in t.column("kafka_offset").to_pylist())


def _stopped_with(logs: list[dict[str, Any]]) -> str:
    return str(next(e for e in logs if e["event"] == "stopped: IntegrityError")["error"])


def _staged_output(history: str = "staged only") -> tuple[MemoryBroker, MemoryStore, int]:
    """Output whose newest staged rows an outsider will delete: the broker, the store and the
    committed position."""
    broker, store = MemoryBroker(), MemoryStore()
    broker.create_topic("t", 1)
    if history == "final file, then staged":
        _produce(broker, 0, 30)
        assert _run(broker, store)[0] == 0  # final [0, 30)
        _produce(broker, 30, 30)
    else:
        _produce(broker, 0, 30)
    _stage(broker, store, polls=4)
    committed = broker.committed_offset("g", "t", 0)
    assert committed in (30, 60) and _staged(store)
    return broker, store, committed


@pytest.mark.parametrize("deleted", ["every staged piece", "the newest staged piece"])
@pytest.mark.parametrize("history", ["staged only", "final file, then staged"])
def test_staged_rows_deleted_from_under_the_group_stop_the_next_run_with_nothing_changed(
    deleted: str, history: str
) -> None:
    broker, store, committed = _staged_output(history)
    gone = _staged(store) if deleted == "every staged piece" else _staged(store)[-1:]
    for key in gone:
        del store.objects[key]
    reach = committed - 10 if deleted == "the newest staged piece" else (30 if committed == 60 else None)
    left = dict(store.objects)
    _produce(broker, committed, 20)
    code, logs, runner = _run(broker, store)
    assert code == EXIT_FATAL
    said = _stopped_with(logs)
    lost = f"[{reach}, {committed})" if reach is not None else f"below {committed}"
    assert said.startswith(f"t[0]: the committed position {committed} was committed by this consumer once "
                           "the rows below it were staged in this output, but nothing here reaches it")
    assert f"the records {lost} are in no file. Nothing was changed." in said
    assert ("--reset-offsets --to-earliest" if reach is None else f"--to-offset {reach})") in said
    assert runner.stats.records == 0
    assert store.objects == left
    assert broker.committed_offset("g", "t", 0) == committed

    # The operator's answer: move the offset back to what S3 still holds; every record once.
    broker.reset_offsets("g", "t", 0, reach if reach is not None else 0)
    code, _, _ = _run(broker, store)
    assert code == 0
    assert _offsets(store) == list(range(committed + 20))


def test_going_on_without_the_deleted_rows_is_the_operators_reset_to_the_committed_position() -> None:
    broker, store, committed = _staged_output()
    for key in _staged(store):
        del store.objects[key]
    assert _run(broker, store)[0] == EXIT_FATAL
    broker.reset_offsets("g", "t", 0, committed)  # kafka-consumer-groups --to-offset 30: no note
    _produce(broker, committed, 20)
    code, _, _ = _run(broker, store)
    assert code == 0
    assert _offsets(store) == list(range(30, 50))


def test_a_position_without_a_note_gets_one_from_the_recovery_that_resumes_its_pieces() -> None:
    """The operator re-set the offset where it was (``--to-offset 30``: no note), and the group
    ran again with nothing new to read, so it committed nothing. A clean-up then deleted the
    newest piece: with no note that looked like a reset forwards, and the run went on at 30 with
    [20, 30) in no file, exit 0 (found by tests/unit/test_group_history.py). Recovery that resumes
    staged pieces reaching a position without a note commits it again with one."""
    broker, store, committed = _staged_output()
    broker.reset_offsets("g", "t", 0, committed)
    assert broker.committed_note("g", "t", 0) == ""
    _stage(broker, store, polls=1)  # nothing new to read: no flush, no commit of its own
    note = parse_note(broker.committed_note("g", "t", 0))
    assert note is not None and note.held == "staged"
    del store.objects[_staged(store)[-1]]
    left = dict(store.objects)
    code, logs, _ = _run(broker, store)
    assert code == EXIT_FATAL and "nothing here reaches it" in _stopped_with(logs)
    assert store.objects == left


def test_final_files_expired_by_the_outputs_retention_are_not_taken_for_deleted_staging() -> None:
    """A lifecycle rule expiring old output is no loss: the group's last commit was a roll's."""
    broker, store = page_view_broker(1, 30), MemoryStore()
    assert _run(broker, store)[0] == 0
    assert parse_note(broker.committed_note("g", "t", 0)).held == "rolled"  # type: ignore[union-attr]
    for key in list(store.objects):
        del store.objects[key]  # every object of the prefix expired
    _produce(broker, 30, 20)
    code, logs, _ = _run(broker, store)
    assert code == 0
    assert _offsets(store) == list(range(30, 50))
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]


@pytest.mark.parametrize("vanishing", ["final file", "staged piece"])
def test_an_object_gone_while_recovery_reads_it_stops_for_a_restart_only_when_it_was_output(
    vanishing: str,
) -> None:
    """An object vanishes between recovery's listing and its read of it (found by
    tests/unit/test_group_history.py). Output (a final file a lifecycle rule expires) is no loss:
    the run ends with status 4, which a supervisor restarts, and the next run goes on from what S3
    holds. A staged piece is committed rows: status 5, as before, for the operator."""
    broker, store, committed = _staged_output("final file, then staged")
    target = next(iter(_finals(store))) if vanishing == "final file" else _staged(store)[0]

    def expire_when_read(op: str, key: str) -> None:
        if key == target and op not in ("list", "put_if_absent") and target in store.objects:
            del store.objects[target]

    store.on_op = expire_when_read
    code, logs, _ = _run(broker, store)
    store.on_op = None
    if vanishing == "staged piece":
        assert code == EXIT_FATAL and "an object recovery listed a moment ago is gone" in _stopped_with(logs)
        return
    assert code == EXIT_STORAGE, [e["event"] for e in logs if e["log_level"] == "error"]
    said = next(e for e in logs if e["event"] == "stopped: S3 error")["error"]
    assert "while every staged object it listed is still there" in said and target in said
    assert broker.committed_offset("g", "t", 0) == committed
    _produce(broker, committed, 20)
    assert _run(broker, store)[0] == 0
    assert _offsets(store) == list(range(30, committed + 20))


def test_an_operators_reset_forwards_still_goes_on_and_names_the_skipped_range() -> None:
    broker, store, _ = _staged_output()
    _produce(broker, 30, 30)
    broker.reset_offsets("g", "t", 0, 45)  # --to-offset 45: skip a backlog
    code, logs, _ = _run(broker, store)
    assert code == 0
    assert any("positions [30, 45) were skipped" in e["event"] for e in logs)
    assert _offsets(store) == list(range(30)) + list(range(45, 60))


def test_a_group_moved_to_another_output_goes_on_there_and_says_where_its_position_came_from() -> None:
    broker, store, _ = _staged_output()
    _produce(broker, 30, 20)
    code, logs, _ = _run(broker, store, output="s3://bucket/moved")
    assert code == 0
    assert _offsets(store, "moved/") == list(range(30, 50))
    said = [e for e in logs if e["event"].startswith("the committed position was committed while writing "
                                                      "to another output")]
    assert said and said[0]["committed_for"] == "s3://bucket/out"
    assert said[0]["output"] == "s3://bucket/moved"


def test_positions_committed_without_a_note_keep_the_old_reading() -> None:
    """Commits of an older version (or another tool) say nothing: a gap is read as a reset
    forwards, as before; the next flush writes a note."""
    broker, store, _ = _staged_output()
    broker.group("g").notes.clear()
    for key in _staged(store):
        del store.objects[key]
    _produce(broker, 30, 20)
    code, _, _ = _run(broker, store)
    assert code == 0
    assert _offsets(store) == list(range(30, 50))
    assert broker.committed_note("g", "t", 0) == commit_note("rolled", "s3://bucket/out")


def test_a_file_of_dead_letters_only_is_rolled_without_a_file_and_is_not_taken_for_deleted_staging() -> None:
    broker = MemoryBroker()
    broker.create_topic("t", 1)
    store = MemoryStore()
    for _ in range(15):
        broker.produce("t", b"\xff\xff\xff", key=b"k")  # not page_view: every record a dead letter
    assert _run(broker, store)[0] == 0
    assert not _finals(store) and not _staged(store)
    _produce(broker, 15, 20)
    code, _, _ = _run(broker, store)
    assert code == 0
    assert _offsets(store) == list(range(15, 35))


def test_every_commit_says_what_holds_the_rows_below_it() -> None:
    broker, store = page_view_broker(1, 30), MemoryStore()
    notes: list[str] = []
    runner = memory_runner(broker, store, row_group_rows=10, until_caught_up=True)
    real = runner.consumer.commit

    def commit(**kw: Any) -> Any:
        notes.extend(tp.metadata for tp in kw["offsets"])
        return real(**kw)

    runner.consumer.commit = commit
    assert runner.run() == 0
    staged, rolled = commit_note("staged", "s3://bucket/out"), commit_note("rolled", "s3://bucket/out")
    assert notes == [staged, staged, staged, rolled]
    assert staged == f"{NOTE_MAGIC} staged s3://bucket/out"


def test_a_cluster_that_refuses_the_note_gets_commits_without_one_and_a_warning() -> None:
    """A broker whose ``offset.metadata.max.bytes`` is below the note's length refuses the commit
    (OFFSET_METADATA_TOO_LARGE): the run goes on without notes, says so once, and loses nothing."""
    broker, store = page_view_broker(1, 30), MemoryStore()
    broker.metadata_max_bytes = 10
    code, logs, _ = _run(broker, store)
    assert code == 0
    assert _offsets(store) == list(range(30))
    assert broker.committed_offset("g", "t", 0) == 30 and broker.committed_note("g", "t", 0) == ""
    said = [e for e in logs if e["event"].startswith("the cluster refuses the offset metadata")]
    assert len(said) == 1 and said[0]["log_level"] == "warning"


def test_a_note_names_a_long_output_by_its_hash_and_reads_back() -> None:
    long = "s3://bucket/" + "x" * 600
    note = commit_note("staged", long)
    assert len(note) < 120 and note_output(long).startswith("sha256:")
    parsed = parse_note(note)
    assert parsed is not None and parsed.staged_in(long) and not parsed.staged_in(long + "y")
    assert parse_note("") is None and parse_note("someone else's metadata") is None
    assert parse_note(f"{NOTE_MAGIC} unknown s3://b/p") is None
