"""The partition worker's state machine on in-memory doubles (consumer.testing): every finding of
issue 8 that lives in the worker, and a crash at every store request of a run.

Each test names the issue-8 item it pins. The doubles answer conditional writes, multipart rules
and fencing as the real parts do (tests/unit/test_testing_doubles.py proves that against S3); the
same behaviours are also covered on the real stack by tests/integration and tests/faults.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pyarrow.parquet as pq
import pytest
from structlog.testing import capture_logs

from consumer import log as logmod
from consumer.config import Config
from consumer.decoding import Decoder
from consumer.errors import BadRecordStop, IntegrityError, StorageContractError
from consumer.kafka_names import GroupView
from consumer.layout import Layout
from consumer.positions import PartitionFenced
from consumer.registry import RegistryError
from consumer.samples import encode_raw, load_schema, make_record, parsed_schema
from consumer.storage import probe_conditional_writes
from consumer.testing import Crash, MemoryPositions, MemoryStore, Message, crash_at, crash_at_request
from consumer.worker import AVRO_SCHEMA_KEY, PartitionState, PartitionWorker, SharedState

PREFIX = "out"
LAYOUT = Layout(PREFIX)
SCHEMA = parsed_schema("page_view")
BASE = Config(
    bootstrap_servers="unused",
    group_id="g",
    topics=("t",),
    output=f"s3://bucket/{PREFIX}",
    schema="page_view",
    row_group_rows=10,
    file_rows=30,
)


def body(i: int) -> bytes:
    return encode_raw(SCHEMA, make_record("page_view", i))


def msg(i: int, value: bytes | None = None, *, bad: bool = False) -> Message:
    v = body(i) + b"\x00\x00" if bad else (body(i) if value is None else value)
    return Message(i, v, key=f"k{i}".encode(), timestamp=1_700_000_000_000 + i)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_worker(
    store: MemoryStore,
    positions: MemoryPositions,
    config: Config = BASE,
    *,
    decoder: Decoder | None = None,
    clock: Callable[[], float] | None = None,
    wall: Callable[[], float] | None = None,
) -> PartitionWorker:
    kw: dict[str, Any] = {}
    if clock is not None:
        kw["clock"] = clock
    if wall is not None:
        kw["wall"] = wall
    return PartitionWorker(
        "t",
        0,
        config=config,
        store=store,
        positions=positions,
        layout=LAYOUT,
        decoder=decoder or Decoder("raw", schema=load_schema("page_view")),
        shared=SharedState(group_id=config.group_id),
        log=logmod.get("test"),
        **kw,
    )


def finals(store: MemoryStore) -> list[tuple[str, Any]]:
    """(key, pyarrow table) of every final file, in key order."""
    out = []
    for key in sorted(store.objects):
        if key.endswith(".parquet") and "/_" not in key:
            out.append((key, pq.read_table(io.BytesIO(store.objects[key]))))
    return out


def final_offsets(store: MemoryStore) -> list[int]:
    return sorted(o for _, t in finals(store) for o in t.column("kafka_offset").to_pylist())


def staged(store: MemoryStore) -> list[str]:
    return sorted(k for k in store.objects if "/_staging/" in f"/{k}")


def dead_letter_offsets(store: MemoryStore) -> list[int]:
    out = []
    for key, data in store.objects.items():
        if "_dead_letters/" in key:
            out += [json.loads(line)["offset"] for line in data.decode().splitlines()]
    return sorted(out)


def footer_kv(data: bytes) -> dict[str, str]:
    meta = pq.ParquetFile(io.BytesIO(data)).metadata.metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items()}


def run(worker: PartitionWorker, offsets: range | list[int], bad: set[int] = frozenset()) -> None:
    for i in offsets:
        worker.append(msg(i, bad=i in bad))


# -- item 1: --on-error fail at flush time --------------------------------------------------------
def test_fail_mode_flush_commits_exactly_the_rows_before_the_bad_record() -> None:
    """10 good, 1 malformed, 5 good, then flush(): committed 10, rows 0–9, no dead letter."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, on_error="fail", row_group_rows=1000, file_rows=None))
    w.recover()
    run(w, range(16), bad={10})  # malformed bodies are only found when the chunk is decoded
    with pytest.raises(BadRecordStop, match="offset 10"):
        w.flush()
    assert positions.committed("t", 0) == 10
    assert w.state is PartitionState.HALTED
    w.close()  # shutdown after the stop writes and commits nothing more
    w.finish()
    assert positions.committed("t", 0) == 10
    assert dead_letter_offsets(store) == []
    pieces = [k for k in staged(store) if k.endswith(".piece")]
    assert len(pieces) == 1 and pieces[0].endswith("00000000000000000000-00000000000000000010.piece")
    rows = pq.read_table(io.BytesIO(store.objects[pieces[0]])).column("kafka_offset").to_pylist()
    assert rows == list(range(10))


def test_fail_mode_bad_first_record_commits_nothing() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, on_error="fail", row_group_rows=1000))
    w.recover()
    run(w, range(5), bad={0})
    with pytest.raises(BadRecordStop, match="offset 0"):
        w.close()
    assert positions.committed("t", 0) is None or positions.committed("t", 0) == 0
    assert staged(store) == []


# -- items 2 and 3: offset resets and broken chains -------------------------------------------------
def open_file_with_30_committed(store: MemoryStore, positions: MemoryPositions) -> None:
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(30))
    assert positions.committed("t", 0) == 30 and len(staged(store)) == 3


def test_forward_reset_finishes_the_staged_file_and_continues_from_the_new_position() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    open_file_with_30_committed(store, positions)
    positions.reset("t", 0, 100)  # kafka-consumer-groups --reset-offsets --to-latest
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w.recover() == 100
    assert final_offsets(store) == list(range(30))  # the committed rows are kept, not deleted
    assert staged(store) == []
    run(w, range(100, 110))
    w.finish()
    assert final_offsets(store) == [*range(30), *range(100, 110)]


def test_expired_offsets_adopt_the_position_s3_proves() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    open_file_with_30_committed(store, positions)
    positions.reset("t", 0, None)  # offsets.retention.minutes passed
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w.recover() == 30
    assert positions.committed("t", 0) == 30
    assert w.file is not None and w.file.rows == 30
    run(w, range(30, 40))
    w.finish()
    assert final_offsets(store) == list(range(40))


def test_expired_offsets_after_a_file_of_bad_records_only_keep_its_dead_letters() -> None:
    """[0, 10) rolled; then a file of bad records only, [10, 20): its roll published nothing and
    its dead-letter objects are all that holds it. The offsets expire. Every offset of the objects'
    ranges has its line, so recovery adopts 20 and keeps them. It used to adopt 10 (the final
    file's end) and delete them to read the records again: lost when retention had deleted those
    records from Kafka too. A reset backwards into them stops (status 5) and changes nothing."""
    store, positions = MemoryStore(), MemoryPositions()
    cfg = replace(BASE, file_rows=10, row_group_rows=5)
    w = make_worker(store, positions, cfg)
    w.recover()
    run(w, range(20), bad=set(range(10, 20)))
    w.finish()  # the file of no rows is finished as nothing
    assert final_offsets(store) == list(range(10)) and staged(store) == []
    assert positions.committed("t", 0) == 20
    letters = {k: v for k, v in store.objects.items() if "_dead_letters/" in k}
    assert len(letters) == 2
    before = dict(store.objects)
    positions.reset("t", 0, 12)
    with pytest.raises(IntegrityError, match=r"position 12 is inside \[10, 15\)"):
        make_worker(store, positions, cfg).recover()
    assert store.objects == before
    positions.reset("t", 0, None)  # offsets expired
    w2 = make_worker(store, positions, cfg)
    assert w2.recover() == 20
    assert positions.committed("t", 0) == 20
    assert {k: v for k, v in store.objects.items() if "_dead_letters/" in k} == letters
    run(w2, range(20, 25))
    w2.finish()
    assert final_offsets(store) == [*range(10), *range(20, 25)]
    assert dead_letter_offsets(store) == list(range(10, 20))


def test_a_piece_removed_by_someone_else_stops_recovery_and_deletes_nothing() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    open_file_with_30_committed(store, positions)
    middle = staged(store)[1]
    del store.objects[middle]
    before = staged(store)
    w = make_worker(store, positions)
    with pytest.raises(IntegrityError, match="do not chain"):
        w.recover()
    assert staged(store) == before


def test_backward_reset_into_final_files_is_detected_at_recovery() -> None:
    """Roll [0,50), reset the group to 25: consuming again would duplicate 25..49."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=50))
    w.recover()
    run(w, range(50))
    assert len(finals(store)) == 1
    positions.reset("t", 0, 25)
    w2 = make_worker(store, positions)
    with pytest.raises(IntegrityError, match="moved backwards"):
        w2.recover()
    assert final_offsets(store) == list(range(50))


def test_overlap_with_any_final_file_is_refused_at_roll() -> None:
    """A final file that starts inside the range being rolled (not at the same key) is found."""
    store, positions = MemoryStore(), MemoryPositions()
    other = make_worker(store, MemoryPositions(), replace(BASE, file_rows=None))
    other.recover()
    run(other, range(10, 40))
    other.finish()  # final [10, 40) from another run of the same prefix
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    positions.reset("t", 0, 0)
    with pytest.raises(IntegrityError):
        w.recover()  # the committed position 0 is below the final file's end: stop at once


# -- two consumer groups writing one prefix ----------------------------------------------------------
def test_pieces_and_final_files_name_the_group_that_wrote_them() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=20))
    w.recover()
    run(w, range(30))  # final [0, 20), piece [20, 30) staged
    [(key, _)] = finals(store)
    pieces = [k for k in staged(store) if k.endswith(".piece")]
    assert pieces and all(footer_kv(store.objects[k])["kafka.group_id"] == "g" for k in [key, *pieces])


def test_a_second_group_on_the_prefix_is_named_when_their_files_collide() -> None:
    """Groups "a" and "b" write one prefix with other file budgets (a copied deployment with
    changed flags). Each offset stays in at most one final file, as before; what changes is that
    the run that collides says it met another group, instead of suggesting an offset reset."""
    store = MemoryStore()
    a = make_worker(store, MemoryPositions(), replace(BASE, group_id="a", file_rows=30))
    b = make_worker(store, MemoryPositions(), replace(BASE, group_id="b", file_rows=20))
    a.recover()
    b.recover()
    run(b, range(10))  # b's piece [0, 10)
    with capture_logs() as logs:
        run(a, range(10))  # the same range: b's piece is kept (same records), and b is named
    [said] = [e for e in logs if "written by consumer group 'b'" in e["event"]]
    assert said["log_level"] == "error" and "this run is group 'a'" in said["event"]
    run(b, range(10, 20))  # b rolls [0, 20)
    with pytest.raises(IntegrityError, match=r"exists with positions \[0, 20\).*written by consumer "
                       r"group 'b' \(this run is group 'a'\): one output prefix belongs to one"):
        run(a, range(10, 30))  # a's roll of [0, 30) meets b's final file
    assert final_offsets(store) == list(range(20))


def test_a_group_behind_another_groups_final_files_names_it_at_recovery() -> None:
    store = MemoryStore()
    b = make_worker(store, MemoryPositions(), replace(BASE, group_id="b", file_rows=50))
    b.recover()
    run(b, range(50))
    positions = MemoryPositions()
    positions.reset("t", 0, 20)  # group "a" committed 20 here before "b" took over the prefix
    a = make_worker(store, positions, replace(BASE, group_id="a"))
    with pytest.raises(IntegrityError, match=r"written by consumer group 'b' \(this run is group 'a'\)"):
        a.recover()
    assert final_offsets(store) == list(range(50))


OWNS_IT = GroupView(stable=True, members={"b-1": frozenset({("t", 0)})})


def group_b_staged_30(file_rows: int | None = None) -> MemoryStore:
    """Group "b" wrote [0, 30) to the prefix: staged pieces (or, with file_rows 30, a final file;
    with file_rows 0, every record was bad: dead letters only)."""
    store = MemoryStore()
    b = make_worker(store, MemoryPositions(), replace(BASE, group_id="b", file_rows=file_rows or None))
    b.recover()
    run(b, range(30), bad=set(range(30)) if file_rows == 0 else set())
    if file_rows == 0:
        b.finish()  # flushed, and the file of no rows rolled: it publishes nothing
        assert store.objects and all("/_dead_letters/" in k for k in store.objects)
    return store


@pytest.mark.parametrize("file_rows", [None, 30, 0],
                         ids=["from-staged-pieces", "from-a-final-file", "from-dead-letters"])
@pytest.mark.parametrize(
    ("group", "remedy"),
    [
        ("a", r"--reset-offsets --group a --topic t:0 --to-offset 30 --execute"),
        ("", r"A replay re-exports history into a prefix of its own: give it another --output"),
    ],
    ids=["a-group", "a-replay"],
)
def test_no_position_is_adopted_from_a_group_that_still_writes_the_partition(
    file_rows: int | None, group: str, remedy: str
) -> None:
    """A deployment copied with a new group id while the old group runs, or a replay pointed at
    its prefix: there is no position of this writer's own, and what S3 holds was written by "b",
    whose member owns the partition. Adopting would make two writers share one prefix until their
    files first differ. Stop at once (status 5), name "b", and commit and delete nothing."""
    store = group_b_staged_30(file_rows)
    before = dict(store.objects)
    positions = MemoryPositions()
    a = make_worker(store, positions, replace(BASE, group_id=group, file_rows=file_rows))
    asked: list[str] = []
    a.shared.describe_group = lambda other: asked.append(other) or OWNS_IT
    who = "this group" if group else "this replay"
    with pytest.raises(IntegrityError, match=rf"{who} has no position of its own here, and the output here "
                       r"was last written by consumer group 'b', which still runs: it has 1 member, and "
                       r"one of them owns this partition. one output prefix belongs to one consumer "
                       rf"group.*Nothing was committed or deleted. .*{remedy}"):
        a.recover()
    assert asked == ["b"]
    assert positions.committed("t", 0) is None and store.objects == before


def group_b_rolled_under_partition_by(writer: str) -> tuple[MemoryStore, Config]:
    """Under ``--partition-by``, ``writer`` (a group id, or "" for a replay) wrote the partition and
    rolled every bucket file: the newest output is the rolled high-water marker, and no staged
    piece is left to name the writer."""
    store = MemoryStore()
    config = replace(BASE, partition_by="y={duration_ms:%Y}", bucket_grace=86400.0, max_open_buckets=8,
                     file_rows=9)
    b = make_worker(store, MemoryPositions(), replace(config, group_id=writer))
    b.recover()
    run(b, range(30))
    b.finish()
    assert not [k for k in store.objects if "/_staging/" in k]
    assert [k for k in store.objects if "/_rolled/" in k]
    return store, config


@pytest.mark.parametrize(
    ("writer", "group", "named", "remedy"),
    [
        ("b", "a", "consumer group 'b'", r"--reset-offsets --group a --topic t:0 --to-offset 30 --execute"),
        ("b", "", "consumer group 'b'", r"A replay re-exports history into a prefix of its own"),
        ("bé/ü%", "a", "consumer group 'bé/ü%'", r"--to-offset 30"),
    ],
    ids=["group-after-group", "replay-after-group", "group-id-not-ascii"],
)
def test_under_partition_by_no_position_is_adopted_from_a_rolled_marker_of_a_running_writer(
    writer: str, group: str, named: str, remedy: str
) -> None:
    """The newest output is the ``_rolled/`` marker of a writer that still runs (a deployment
    copied with a new group id; a replay pointed at its prefix). The marker's end used to be
    adopted without asking anyone, since only pieces, final files and dead letters named their
    writer. Its S3 metadata names it now (percent-encoded: metadata is ASCII), and adopting asks
    the coordinator as in the plain layout: stop, commit and delete nothing."""
    store, config = group_b_rolled_under_partition_by(writer)
    before = dict(store.objects)
    positions = MemoryPositions()
    a = make_worker(store, positions, replace(config, group_id=group))
    asked: list[str] = []
    a.shared.describe_group = lambda other: asked.append(other) or OWNS_IT
    with pytest.raises(IntegrityError, match=rf"was last written by {named}, which still runs.*"
                                             rf"Nothing was committed or deleted. .*{remedy}"):
        a.recover()
    assert asked == [writer]
    assert positions.committed("t", 0) is None and store.objects == before


def test_under_partition_by_a_group_behind_another_s_rolled_file_is_told_so_not_of_a_reset() -> None:
    """Group "a" committed 20, then "b" took over the prefix and rolled its files to 30 (a renamed
    deployment; "a" comes back). Below the rolled high-water, "a" was told its offsets were moved
    backwards and to reset them; the marker names "b" now, and so does the stop, as in the plain
    layout. When "a" has no position, the adoption warning names "b" too."""
    store, config = group_b_rolled_under_partition_by("b")
    before = dict(store.objects)
    positions = MemoryPositions()
    positions.reset("t", 0, 20)
    a = make_worker(store, positions, replace(config, group_id="a"))
    with pytest.raises(IntegrityError, match=r"committed position 20 is below the end 30 of a bucket file "
                                             r"written by consumer group 'b' \(this run is group 'a'\)"):
        a.recover()
    assert store.objects == before and positions.committed("t", 0) == 20
    fresh = make_worker(store, MemoryPositions(), replace(config, group_id="a"))
    fresh.shared.describe_group = lambda other: GroupView(stable=True, members={})  # "b" has stopped
    with capture_logs() as logs:
        assert fresh.recover() == 30
    assert any("the newest rolled bucket file was written by consumer group 'b' (this run is group 'a')"
               in e["event"] for e in logs)


def test_under_partition_by_a_rolled_marker_of_an_earlier_version_is_adopted_as_before() -> None:
    """A marker written before markers named their writer carries no metadata: its end is adopted
    without asking, as before (the writer is not known), and nothing breaks."""
    store, config = group_b_rolled_under_partition_by("b")
    for key in [k for k in store.objects if "/_rolled/" in k]:
        store.put_object(key, store.objects[key])  # as an earlier version wrote it: no metadata
        info = store.head(key)
        assert info is not None and info.metadata == {}
    positions = MemoryPositions()
    a = make_worker(store, positions, replace(config, group_id="a"))
    a.shared.describe_group = lambda other: pytest.fail(f"asked about {other}")
    assert a.recover() == 30 and positions.committed("t", 0) == 30


@pytest.mark.parametrize(
    ("view", "warned"),
    [
        (GroupView(stable=True, members={}), False),  # stopped: no members
        (GroupView(stable=True, members={"b-1": frozenset({("t", 1)})}), False),  # owns others only
        (None, True),  # the coordinator did not answer: adopt as before, and say so
    ],
    ids=["no-members", "other-partitions", "no-answer"],
)
def test_a_position_is_adopted_from_a_group_that_does_not_write_the_partition(
    view: GroupView | None, warned: bool
) -> None:
    store = group_b_staged_30()
    positions = MemoryPositions()
    a = make_worker(store, positions, replace(BASE, group_id="a", file_rows=None))
    a.shared.describe_group = lambda group: view
    with capture_logs() as logs:
        assert a.recover() == 30
    assert positions.committed("t", 0) == 30
    assert any("whether the consumer group that wrote" in e["event"] for e in logs) == warned


def test_a_group_adopting_its_own_output_asks_no_one() -> None:
    """Offsets expired or deleted: the pieces are this group's own, so the coordinator is not asked."""
    store = group_b_staged_30()
    positions = MemoryPositions()
    b = make_worker(store, positions, replace(BASE, group_id="b", file_rows=None))
    b.shared.describe_group = lambda group: pytest.fail(f"asked about {group}")
    assert b.recover() == 30 and positions.committed("t", 0) == 30


@pytest.mark.parametrize("group", ["b", ""])  # "": a replay
def test_recovery_never_deletes_a_piece_another_group_wrote(group: str) -> None:
    """Recovery deletes the pieces past the committed position as this group's uncommitted work.
    A piece of another group may hold that group's committed rows: stop, and delete nothing."""
    store = MemoryStore()
    a = make_worker(store, MemoryPositions(), replace(BASE, group_id="a", file_rows=None))
    a.recover()
    run(a, range(30))  # pieces [0, 10), [10, 20), [20, 30), committed 30 in group "a"
    before = staged(store)
    positions = MemoryPositions()
    positions.reset("t", 0, 10)  # this run stands at 10 (it wrote [0, 10) too, or was reset there)
    b = make_worker(store, positions, replace(BASE, group_id=group, file_rows=None))
    this = f"group {group!r}" if group else "a replay"
    with pytest.raises(IntegrityError, match=rf"would delete the staged piece \[10, 20\) past this run's "
                       rf"position 10, but it was written by consumer group 'a' \(this run is {this}\)"):
        b.recover()
    assert staged(store) == before
    assert positions.committed("t", 0) == 10


@pytest.mark.parametrize("bad", [set(), {15}])
def test_a_groups_recovery_never_deletes_what_a_replay_wrote(bad: set[int]) -> None:
    """A replay pointed at a group's prefix (or a group at a replay's): the replay's pieces and
    dead letters past the group's position are the replay's committed rows (its positions live
    in S3). They name their writer as a replay, so the group stops instead of deleting them."""
    store = MemoryStore()
    replay = make_worker(store, MemoryPositions(), replace(BASE, group_id="", file_rows=None))
    replay.recover()
    run(replay, range(20), bad=bad)
    if bad:  # the replay between its dead-letter PUT and its piece PUT
        [last] = [k for k in staged(store) if k.endswith("-00000000000000000020.piece")]
        del store.objects[last]
    before = sorted(store.objects)
    positions = MemoryPositions()
    positions.reset("t", 0, 10)
    group = make_worker(store, positions, replace(BASE, group_id="g", file_rows=None))
    what = "dead-letter object" if bad else "staged piece"
    with pytest.raises(IntegrityError, match=rf"would delete the {what} \[10, 20\) past this run's "
                       r"position 10, but it was written by a replay \(this run is group 'g'\)"):
        group.recover()
    assert sorted(store.objects) == before


def test_recovery_never_deletes_dead_letters_another_group_wrote() -> None:
    """Group "a" between the two PUTs of a flush: its range's dead letters are written, its piece
    not yet. Another group's recovery would delete them as its own uncommitted work, and "a" would
    then commit the range without them: a silent drop. It stops instead, and deletes nothing."""
    store = MemoryStore()
    a = make_worker(store, MemoryPositions(), replace(BASE, group_id="a", file_rows=None))
    a.recover()
    run(a, range(20), bad={15})  # pieces [0, 10) and [10, 20); the dead letter of offset 15
    [last] = [k for k in staged(store) if k.endswith("-00000000000000000020.piece")]
    del store.objects[last]  # as if "a" were between its dead-letter PUT and its piece PUT
    positions = MemoryPositions()
    positions.reset("t", 0, 10)
    b = make_worker(store, positions, replace(BASE, group_id="b", file_rows=None))
    said = (r"would delete the dead-letter object \[10, 20\) past this run's position 10, but it was "
            r"written by consumer group 'a' \(this run is group 'b'\)")
    with pytest.raises(IntegrityError, match=said):
        b.recover()
    assert dead_letter_offsets(store) == [15]


def test_recovery_still_deletes_its_own_uncommitted_pieces() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(30))
    positions.reset("t", 0, 10)  # as if [10, 30) had been PUT and the process died before commits
    again = make_worker(store, positions, replace(BASE, file_rows=None))
    assert again.recover() == 10
    assert len(staged(store)) == 1  # [0, 10) resumes; [10, 20) and [20, 30) are read again


# -- item 4: a store that ignores If-None-Match ------------------------------------------------------
def test_probe_refuses_a_store_without_conditional_writes() -> None:
    good = MemoryStore()
    probe_conditional_writes(good, "out/_probe/x")
    assert "out/_probe/x" not in good.objects
    lax = MemoryStore()
    lax.ignore_conditional_writes = True
    with pytest.raises(StorageContractError, match="If-None-Match"):
        probe_conditional_writes(lax, "out/_probe/x")


def test_probe_refuses_a_store_that_honours_the_condition_on_put_only() -> None:
    """A final file over one part is completed as a multipart upload with ``If-None-Match: *``; a
    server may honour the condition on PutObject and ignore it there, and then a roll could
    overwrite another writer's final file. Refused at start, with nothing left behind."""
    good = MemoryStore()
    probe_conditional_writes(good, "out/_probe/x")
    assert good.stats.requests["complete_multipart_upload"] == 1
    assert good.stats.requests["abort_multipart_upload"] == 1  # the refused upload is not left
    assert not good.objects and not good.uploads
    half = MemoryStore()
    half.ignore_conditional_completes = True
    with pytest.raises(StorageContractError, match="honours conditional writes on PutObject but not on "
                                                   "CompleteMultipartUpload"):
        probe_conditional_writes(half, "out/_probe/x")
    assert not half.objects and not half.uploads


def test_a_replays_probe_also_refuses_a_store_that_ignores_if_match() -> None:
    """A replay keeps its positions in S3 and replaces them with If-Match; a group run does not,
    so only a replay's probe asks for it."""
    store = MemoryStore()
    store.ignore_if_match = True
    probe_conditional_writes(store, "out/_probe/x")  # a group run's
    with pytest.raises(StorageContractError, match="does not honour If-Match on PutObject"):
        probe_conditional_writes(store, "out/_probe/x", if_match=True)
    assert not store.objects
    probe_conditional_writes(MemoryStore(), "out/_probe/x", if_match=True)


def test_roll_refuses_a_piece_overwritten_after_it_was_written() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(20))
    first = staged(store)[0]
    zombie = make_worker(MemoryStore(), MemoryPositions(), replace(BASE, compression="snappy"))
    zombie.recover()
    run(zombie, range(10))
    # A lax server let a zombie on other writer options overwrite the committed piece.
    store.objects[first] = next(v for k, v in zombie.store.objects.items() if k.endswith(".piece"))  # type: ignore[attr-defined]
    with pytest.raises(IntegrityError, match="changed after it was written"):
        w.finish()
    assert finals(store) == []


def test_etags_that_are_not_md5s_roll_and_still_catch_an_overwritten_piece() -> None:
    """S3 with SSE-KMS gives ETags that are not the MD5 of the bytes. The roll compares each
    piece's ETag with the one S3 gave when it was written, so files roll (a local MD5 would have
    called every piece "changed") and an overwritten piece is still refused."""
    store, positions = MemoryStore(), MemoryPositions()
    store.opaque_etags = True
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(20))
    w.finish()
    assert [t.num_rows for _, t in finals(store)] == [20]

    store, positions = MemoryStore(), MemoryPositions()
    store.opaque_etags = True
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(20))
    first = staged(store)[0]
    store.objects[first] = store.objects[first][:-8] + b"\x00" * 8  # same size, other bytes
    with pytest.raises(IntegrityError, match="changed after it was written"):
        w.finish()
    assert finals(store) == []


# -- item 5: file identity ---------------------------------------------------------------------------
def test_changed_kafka_columns_finish_the_old_file_with_its_own_schema() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(20))
    other = replace(BASE, file_rows=None, kafka_columns=("offset", "key", "headers"))
    w2 = make_worker(store, positions, other)
    assert w2.recover() == 20
    run(w2, range(20, 30))
    w2.finish()
    files = finals(store)
    assert [t.num_rows for _, t in files] == [20, 10]
    assert "kafka_partition" in files[0][1].column_names and "kafka_partition" not in files[1][1].column_names
    assert "kafka_headers" in files[1][1].column_names
    # A restart with the same options keeps appending to the open file instead.
    assert staged(store) == []


# -- item 6: inputs that used to escape dead letters ------------------------------------------------
class Registry:
    def __init__(self, schemas: dict[int, Any]) -> None:
        self.schemas = schemas

    def schema_by_id(self, schema_id: int) -> Any:
        s = self.schemas[schema_id]
        if isinstance(s, Exception):
            raise s
        return s

    def latest_version(self, subject: str) -> tuple[int, int] | None:
        return None  # no subjects: every writer schema is its own reader

    def versions_of_id(self, schema_id: int) -> list[tuple[str, int]]:
        return []


DECIMAL = {
    "type": "record",
    "name": "D",
    "fields": [
        {"name": "d", "type": {"type": "bytes", "logicalType": "decimal", "precision": 4, "scale": 2}}
    ],
}
RECURSIVE = {
    "type": "record",
    "name": "Node",
    "fields": [{"name": "next", "type": ["null", "Node"]}],
}
NO_FIELDS = {"type": "record", "name": "Empty", "fields": []}


def framed(schema_id: int, payload: bytes) -> bytes:
    return b"\x00" + schema_id.to_bytes(4, "big") + payload


def test_unusable_schemas_and_unrepresentable_values_go_to_dead_letters() -> None:
    registry = Registry(
        {
            1: DECIMAL,
            2: RECURSIVE,
            3: NO_FIELDS,
            4: RegistryError("schema id 4 is a PROTOBUF schema; this consumer only decodes Avro"),
        }
    )
    decoder = Decoder("confluent", registry=registry)  # type: ignore[arg-type]
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, framing="confluent", schema=None, row_group_rows=100),
                    decoder=decoder)
    w.recover()
    values = {
        0: framed(1, b"\x04\x04\xd2"),  # 12.34
        1: framed(2, b"\x00"),  # recursive schema
        2: framed(3, b""),  # a record with no fields
        3: framed(4, b"\x00"),  # PROTOBUF id
        4: framed(1, b"\x06\x12\xd6\x87"),  # 12345.67: wider than decimal(4, 2)
        5: framed(1, b"\x04\xfb\x2e"),  # -12.34
    }
    for i, v in values.items():
        w.append(Message(i, v, timestamp=1))
    w.finish()
    assert final_offsets(store) == [0, 5]
    assert dead_letter_offsets(store) == [1, 2, 3, 4]
    reasons = [json.loads(line)["reason"] for k, v in store.objects.items() if "_dead_letters/" in k
               for line in v.decode().splitlines()]
    assert any("cannot be mapped" in r for r in reasons) and any("not representable" in r for r in reasons)
    assert positions.committed("t", 0) == 6


# -- item 12: a partition that receives only bad records --------------------------------------------
def test_dead_letter_only_partition_is_committed_by_age() -> None:
    clock = Clock()
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, row_group_max_age=5.0), clock=clock)
    w.recover()
    for i in range(3):
        w.append(Message(i, None, timestamp=1))  # tombstones
    assert w.buffered_bytes > 0
    assert not w.flush_due(clock())
    clock.t += 6
    assert w.flush_due(clock())
    w.flush()
    assert positions.committed("t", 0) == 3
    assert dead_letter_offsets(store) == [0, 1, 2]


# -- item 13: a file's age survives restarts ---------------------------------------------------------
def test_file_age_is_kept_across_restarts() -> None:
    wall = Clock(1_000_000.0)
    store, positions = MemoryStore(), MemoryPositions()
    cfg = replace(BASE, file_rows=None, file_max_age=3600.0)
    w = make_worker(store, positions, cfg, wall=wall)
    w.recover()
    run(w, range(10))
    wall.t += 3000  # restarted often, each time younger than the max age
    clock = Clock(50.0)
    w2 = make_worker(store, positions, cfg, clock=clock, wall=wall)
    w2.recover()
    assert not w2.roll_due(clock())
    clock.t += 601
    assert w2.roll_due(clock())


# -- item 14: the row budget of a file is exact ------------------------------------------------------
def test_row_count_file_budget_is_not_overshot() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=7, row_group_rows=2))
    w.recover()
    run(w, range(20))
    w.finish()
    assert [t.num_rows for _, t in finals(store)] == [7, 7, 6]


# -- item 15: whoever finishes a roll writes the same footer -----------------------------------------
def _a_roll_of_20_cut_short_after_its_re_commit() -> tuple[MemoryStore, MemoryPositions]:
    """Records 0..19 staged; the roll of [0, 20) wrote its marker, re-committed 20, and died
    before its final file."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(20))
    store.on_op = crash_at("head_object", key_part=".parquet")  # after the marker and re-commit
    with pytest.raises(Crash):
        w.finish()
    store.on_op = None
    return store, positions


def test_roll_finished_after_a_crash_keeps_the_avro_schema() -> None:
    store, positions = _a_roll_of_20_cut_short_after_its_re_commit()
    assert finals(store) == []
    make_worker(store, positions).recover()  # finishes the interrupted roll
    ((key, _),) = finals(store)
    kv = footer_kv(store.objects[key])
    assert json.loads(kv[AVRO_SCHEMA_KEY]) == load_schema("page_view")
    assert kv["kafka.from_position"] == "0" and kv["kafka.to_position"] == "20"


def test_a_piece_deleted_after_a_roll_was_cut_short_stops_recovery() -> None:
    """A roll of [0, 20) wrote its marker and re-committed 20 ("rolled"), then died before the
    final file. A clean-up deleted the newest piece: with that note, recovery took the chain
    ending at 10 for a reset forwards, finished [0, 10) and skipped [10, 20) without a stop (found
    by tests/unit/test_group_history.py). The marker says the file's pieces reached 20: stop."""
    store, positions = _a_roll_of_20_cut_short_after_its_re_commit()
    newest = [k for k in staged(store) if k.endswith(f"-{20:020d}.piece")]
    del store.objects[newest[0]]
    before = dict(store.objects)
    with pytest.raises(IntegrityError, match=r"nothing here reaches it"):
        make_worker(store, positions, replace(BASE, file_rows=None)).recover()
    assert store.objects == before


def test_a_roll_whose_final_file_exists_is_finished_when_its_marker_was_deleted() -> None:
    """A roll wrote its final file and stopped before deleting the pieces (a crash, or S3 failing
    past the shutdown bound); a clean-up then deleted the roll marker. Recovery saw a chain to the
    position and no marker, and resumed the file as an open one: its next roll met the final file
    and stopped with status 5, telling the operator to remove old files (found by
    tests/unit/test_group_history.py). The final file ending at the position is that file's: the
    roll is finished, and the run goes on with every offset once."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(20))
    store.on_op = crash_at("delete_objects", key_part="/_staging/")  # after the final file
    with pytest.raises(Crash):
        w.finish()
    store.on_op = None
    assert len(finals(store)) == 1
    (marker,) = [k for k in staged(store) if "/roll-" in k]
    del store.objects[marker]
    w2 = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w2.recover() == 20
    assert staged(store) == [] and w2.file is None
    run(w2, range(20, 25))
    w2.finish()
    assert final_offsets(store) == list(range(25))


# -- fencing ----------------------------------------------------------------------------------------
def test_a_fenced_worker_never_writes_again() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(10))
    positions.fence("t", 0)
    with pytest.raises(PartitionFenced):
        run(w, range(10, 20))
    assert w.state is PartitionState.FENCED
    objects = dict(store.objects)
    w.close()
    w.finish()
    run(w, range(20, 30))
    assert store.objects == objects and positions.committed("t", 0) == 10


# -- every store request is a crash point ---------------------------------------------------------
def scenario(store: MemoryStore, positions: MemoryPositions, *, upto: int) -> None:
    """Recover, consume [committed, upto) with a bad record every 13th offset, finish."""
    w = make_worker(store, positions, replace(BASE, file_rows=25, row_group_rows=7))
    start = w.recover() or 0
    run(w, range(start, upto), bad={i for i in range(upto) if i % 13 == 5})
    w.finish()


def count_requests(upto: int) -> int:
    store = MemoryStore()
    scenario(store, MemoryPositions(), upto=upto)
    return sum(store.stats.requests.values())


def crash_points() -> Iterator[int]:
    yield from range(1, count_requests(60) + 1)


@pytest.mark.parametrize("n", list(crash_points()))
def test_a_crash_at_any_store_request_keeps_every_offset_exactly_once(n: int) -> None:
    store, positions = MemoryStore(), MemoryPositions()
    store.on_op = crash_at_request(n)
    with pytest.raises(Crash):
        scenario(store, positions, upto=60)
    store.on_op = None
    scenario(store, positions, upto=60)
    bad = [i for i in range(60) if i % 13 == 5]
    rows = final_offsets(store)
    assert rows == [i for i in range(60) if i not in bad]
    assert dead_letter_offsets(store) == bad
    assert staged(store) == []
    assert positions.committed("t", 0) == 60
    for key, table in finals(store):
        kv = footer_kv(store.objects[key])
        offsets = table.column("kafka_offset").to_pylist()
        assert int(kv["kafka.from_position"]) <= offsets[0] and offsets[-1] < int(kv["kafka.to_position"])
        assert json.loads(kv[AVRO_SCHEMA_KEY]) == load_schema("page_view")
        for o, url in zip(offsets, table.column("url").to_pylist(), strict=True):
            assert url == make_record("page_view", o)["url"]


def test_rows_after_a_flush_in_the_same_batch_are_committed_by_age() -> None:
    """Batch dispatch: a run of records that crosses a row-group boundary restarts the age clock
    for the rows after the flush (found by the crash matrix: they were never flushed by age)."""
    clock = Clock()
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None, row_group_max_age=5.0), clock=clock)
    w.recover()
    w.append_batch([msg(i) for i in range(5)])  # the first run creates the arena record by record
    w.append_batch([msg(i) for i in range(5, 25)])  # fast path: flush at 10 and 20, 5 rows left
    assert positions.committed("t", 0) == 20
    clock.t += 6
    assert w.flush_due(clock())
    w.flush()
    assert positions.committed("t", 0) == 25


def test_a_member_frozen_inside_its_roll_accepts_the_roll_another_finished() -> None:
    """Found by the zombie fault test: frozen after its marker and re-commit, a member wakes up
    after the new owner finished the same roll and deleted the pieces; it must take that final
    file as its own (same range), not stop with an error."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(20))
    done = False

    def new_owner_finishes_first(op: str, key: str) -> None:
        nonlocal done
        if op == "list_objects_v2" and key.endswith("/00000000000000000000/") and not done:
            done = True
            make_worker(store, positions).recover()  # marker at the committed position: finishes

    store.on_op = new_owner_finishes_first
    w.finish()
    assert done and final_offsets(store) == list(range(20)) and staged(store) == []


# -- a long history: rolls and recovery list from the newest final file, not the whole folder -----
FINAL_DIR = "out/topic=t/partition=0/"


def partition_dir_listings(store: MemoryStore) -> list[str]:
    """Record the partition folder's LIST requests (one per page) from now on."""
    seen: list[str] = []

    def on_op(op: str, key: str) -> None:
        if op == "list_objects_v2" and key == FINAL_DIR:
            seen.append(key)

    store.on_op = on_op
    return seen


def long_history(store: MemoryStore, positions: MemoryPositions, files: int) -> None:
    """``files`` final files: [0, 30) rolled, then copies of it under later starts (only the
    newest file below a roll is ever read), named the newest as a roll of ours would."""
    w = make_worker(store, positions)
    w.recover()
    run(w, range(30))
    real = store.objects[LAYOUT.final_key("t", 0, 0)]
    for i in range(1, files):
        store.objects[LAYOUT.final_key("t", 0, i)] = real
    del store.objects[LAYOUT.newest_final_key("t", 0, 0)]
    store.objects[LAYOUT.newest_final_key("t", 0, files - 1)] = b""
    positions.reset("t", 0, 10_000)


def test_recovery_and_rolls_after_a_long_history_list_one_page_each() -> None:
    """2,500 final files (3 pages): recovery lists one page from the named newest file, and so
    does each roll after it; the name moves with every roll."""
    store, positions = MemoryStore(), MemoryPositions()
    long_history(store, positions, 2_500)
    listings = partition_dir_listings(store)
    w = make_worker(store, positions)
    w.recover()
    assert len(listings) == 1
    run(w, range(10_000, 10_120))  # four rolls of 30 rows
    assert len(listings) == 1 + 4
    assert [k for k in store.objects if k.startswith("out/_newest_final/")] == [
        LAYOUT.newest_final_key("t", 0, 10_090)
    ]
    make_worker(store, positions).recover()
    assert len(listings) == 1 + 4 + 1
    assert final_offsets(store)[-120:] == list(range(10_000, 10_120))


def test_without_a_usable_name_recovery_lists_the_whole_folder() -> None:
    """No name (output of an older version), or one whose file is gone: every page, as before."""
    for plant in (None, 5_000):
        store, positions = MemoryStore(), MemoryPositions()
        long_history(store, positions, 2_500)
        store.objects = {k: v for k, v in store.objects.items() if "_newest_final/" not in k}
        if plant is not None:
            store.objects[LAYOUT.newest_final_key("t", 0, plant)] = b""
        listings = partition_dir_listings(store)
        w = make_worker(store, positions)
        w.recover()
        assert len(listings) == (3 if plant is None else 1 + 3)
        run(w, range(10_000, 10_030))
        assert final_offsets(store)[-30:] == list(range(10_000, 10_030))


def test_a_backward_reset_is_still_found_from_the_named_newest_file() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions)
    w.recover()
    run(w, range(90))  # [0, 30) [30, 60) [60, 90), named 60
    positions.reset("t", 0, 45)
    with pytest.raises(IntegrityError, match="moved backwards"):
        make_worker(store, positions).recover()


def test_a_staged_leftover_of_a_file_older_than_the_named_one_is_known_final() -> None:
    """Recovery lists finals from the named newest file only; a staged file older than it is
    looked up by HEAD, so its leftover pieces and marker are known to belong to a final file
    (deleted, not rolled again)."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions)
    w.recover()
    leftover: dict[str, bytes] = {}

    marker = LAYOUT.roll_marker_key("t", 0, 0, 30)

    def keep_staging(op: str, key: str) -> None:
        if op == "put_object" and key == marker:
            leftover.update((k, store.objects[k]) for k in staged(store))
            leftover[marker] = b""

    store.on_op = keep_staging
    run(w, range(30))  # [0, 30): its pieces and marker, as the roll is decided
    store.on_op = None
    run(w, range(30, 60))  # [30, 60), named the newest
    store.objects.update(leftover)
    reads: list[str] = []
    store.on_op = lambda op, key: reads.append(key) if op == "get_object" else None
    make_worker(store, positions).recover()
    assert staged(store) == []
    assert reads == [LAYOUT.final_key("t", 0, 30)]  # its footer only: nothing of file 0 is re-rolled
    assert final_offsets(store) == list(range(60))


def test_a_final_file_written_by_someone_else_after_recovery_is_still_refused_at_roll() -> None:
    """The one-page LIST still sees files that appeared since recovery: one starting inside the
    range being rolled, and one starting below it that reaches into it."""
    for other_range in (range(40, 50), range(20, 35)):
        store, positions = MemoryStore(), MemoryPositions()
        w = make_worker(store, positions)
        w.recover()
        run(w, range(30))  # rolled [0, 30): the newest final file this worker knows
        elsewhere, other_positions = MemoryStore(), MemoryPositions()
        other_positions.reset("t", 0, other_range.start)
        other = make_worker(elsewhere, other_positions, replace(BASE, file_rows=None))
        other.recover()
        run(other, other_range)
        other.finish()  # another run's file, copied into this prefix
        key = LAYOUT.final_key("t", 0, other_range.start)
        store.objects[key] = elsewhere.objects[key]
        with pytest.raises(IntegrityError, match="overlap"):
            run(w, range(30, 60))
        assert LAYOUT.final_key("t", 0, 30) not in store.objects


def test_a_roll_lists_the_whole_folder_when_the_known_final_file_is_gone() -> None:
    """Someone removed the newest final file (a lifecycle rule, by hand): the roll cannot start
    its LIST from there, lists everything and rolls on."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions)
    w.recover()
    run(w, range(60))  # [0, 30) and [30, 60)
    del store.objects[LAYOUT.final_key("t", 0, 30)]
    listings = partition_dir_listings(store)
    run(w, range(60, 90))
    assert len(listings) == 2  # the page from the known file, which lacks it; then the whole folder
    assert final_offsets(store) == [*range(30), *range(60, 90)]


def test_recovery_lists_dead_letters_from_the_newest_final_file_and_still_deletes_uncommitted() -> None:
    """A partition with steady bad records: its dead-letter folder grows with its history.
    Recovery needs only the objects never committed (to delete them); those start at or after the
    newest final file's end, so it lists from there: one page, however long the history. An
    object of a flush that crashed before its commit is still found and deleted, and the records
    come back once."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions)
    w.recover()
    bad = {i for i in range(300) if i % 7 == 3}
    run(w, range(300), bad=bad)  # ten final files [0, 300), a dead-letter object per row group
    folder = LAYOUT.dead_letter_dir("t", 0)
    history = {LAYOUT.dead_letter_key("t", 0, i % 180, i % 180 + 1 + i // 180) for i in range(2_000)}
    for key in history:  # more objects committed long ago, all below the newest final file
        store.objects.setdefault(key, b"")
    armed = [False]

    def crash_before_the_piece(op: str, key: str) -> None:
        if armed[0] and op == "put_object" and "/_staging/" in key:
            raise Crash("after the dead letters of [300, 310), before their piece")

    store.on_op = crash_before_the_piece
    armed[0] = True
    with pytest.raises(Crash):
        run(w, range(300, 310), bad={303})
    uncommitted = LAYOUT.dead_letter_key("t", 0, 300, 310)
    assert uncommitted in store.objects and positions.committed("t", 0) == 300
    pages: list[str] = []
    store.on_op = lambda op, key: pages.append(key) if op == "list_objects_v2" and key == folder else None
    w = make_worker(store, positions)
    w.recover()
    assert len(pages) == 1  # a whole listing would take three pages of 1,000
    assert uncommitted not in store.objects and history <= set(store.objects)
    store.on_op = None
    run(w, range(300, 330), bad={303})
    w.finish()
    rows = final_offsets(store)
    assert rows == [i for i in range(330) if i not in bad | {303}]
    assert dead_letter_offsets(store) == sorted(bad | {303})  # each once (the planted ones are empty)
