"""The time-bucketed layout (--partition-by) on the in-memory doubles: template parsing, the
flush writing one piece into every open bucket file before its commit, rolls by grace, by the
open-bucket bound and by budgets, late records, bad times, and a crash at every store request of
a bucketed run recovering exactly once. Records are produced in shuffled time order so buckets
interleave."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer import log as logmod
from consumer.bucketing import TemplateError, assign, parse_template
from consumer.config import Config
from consumer.decoding import Decoder
from consumer.errors import BadRecordStop, IntegrityError, UsageError
from consumer.layout import Layout, PieceRef, RollMarker
from consumer.positions import PartitionFenced
from consumer.samples import encode_raw, load_schema, make_record, parsed_schema
from consumer.testing import Crash, MemoryPositions, MemoryStore, Message, crash_at_request
from consumer.verify import verify
from consumer.worker import PartitionState, PartitionWorker, SharedState

PREFIX = "out"
LAYOUT = Layout(PREFIX)
SCHEMA = parsed_schema("page_view")
TEMPLATE = "dt={ts:%Y-%m-%d}/hr={ts:%H}"
BASE = Config(
    bootstrap_servers="unused",
    group_id="g",
    topics=("t",),
    output=f"s3://bucket/{PREFIX}",
    schema="page_view",
    row_group_rows=10,
    file_rows=30,
    partition_by=TEMPLATE,
    bucket_grace=3600.0 * 24,
    max_open_buckets=8,
)
T0 = datetime(2026, 11, 30, 4, 0, tzinfo=UTC)


def hour_of(i: int) -> int:
    """Shuffled event time: hours 0–4 interleaved (a record every few offsets goes back)."""
    return (i * 7) % 5


def when(i: int) -> datetime:
    return T0 + timedelta(hours=hour_of(i), seconds=i)


def record(i: int, *, duration: int | str | None = "keep") -> dict[str, Any]:
    r = make_record("page_view", i)
    r["ts"] = when(i)
    if duration != "keep":
        r["duration_ms"] = duration
    return r


def msg(i: int, *, bad: bool = False, **kw: Any) -> Message:
    v = encode_raw(SCHEMA, record(i, **kw))
    if bad:
        v += b"\x00\x00"
    return Message(i, v, key=f"k{i}".encode(), timestamp=int(when(i).timestamp() * 1000))


def make_worker(
    store: MemoryStore, positions: MemoryPositions, config: Config = BASE, **kw: Any
) -> PartitionWorker:
    return PartitionWorker("t", 0, config=config, store=store, positions=positions, layout=LAYOUT,
                           decoder=Decoder("raw", schema=load_schema("page_view")),
                           shared=SharedState(group_id=config.group_id),
                           log=logmod.get("test"), **kw)


def finals(store: MemoryStore) -> list[tuple[str, pa.Table]]:
    return [(k, pq.read_table(io.BytesIO(store.objects[k]))) for k in sorted(store.objects)
            if k.endswith(".parquet") and "/_" not in f"/{k}"]


def staged(store: MemoryStore) -> list[str]:
    return sorted(k for k in store.objects if k.startswith(f"{PREFIX}/_staging/"))


def dead_letter_offsets(store: MemoryStore) -> list[int]:
    return sorted(json.loads(line)["offset"] for k, d in store.objects.items() if "_dead_letters/" in k
                  for line in d.decode().splitlines())


def check_exactly_once(store: MemoryStore, upto: int, bad: set[int], sent: list[int] | None = None) -> None:
    """Every offset below ``upto`` exactly once over all final files (or a dead letter), each row
    in the bucket its time says, every footer range consistent with its rows."""
    seen: list[int] = []
    for key, table in finals(store):
        folder = key.split("/partition=")[0].split("topic=t/")[1]
        raw_meta = pq.ParquetFile(io.BytesIO(store.objects[key])).metadata.metadata or {}
        meta = {k.decode(): v.decode() for k, v in raw_meta.items()}
        lo, hi = int(meta["kafka.from_position"]), int(meta["kafka.to_position"])
        for o in table.column("kafka_offset").to_pylist():
            assert lo <= o < hi
            assert folder == when(o).strftime("dt=%Y-%m-%d/hr=%H"), (key, o)
            seen.append(o)
    assert sorted(seen) == [i for i in (sent if sent is not None else range(upto)) if i not in bad]
    assert dead_letter_offsets(store) == sorted(bad)


def run(w: PartitionWorker, offsets: range | list[int], bad: set[int] | frozenset[int] = frozenset()) -> None:
    for i in offsets:
        w.append(msg(i, bad=i in bad))


# -- the template ---------------------------------------------------------------------------------
def test_template_parses_and_names_its_columns() -> None:
    t = parse_template(TEMPLATE)
    assert t.names == ("dt", "hr") and t.unit == "hour" and t.field_path == ("ts",)
    assert parse_template("day={@timestamp:%Y%m%d}").field_path is None
    assert parse_template("dt={event.time:%Y-%m-%d}").field_path == ("event", "time")
    assert parse_template("y={ts:%Y}/doy={ts:%j}/h={ts:%H}").unit == "hour"


@pytest.mark.parametrize("bad, words", [
    ("hr={ts:%H}", "add %Y"),
    ("dt={ts:%Y-%m-%d}/hr={other:%H}", "several time sources"),
    ("dt={ts:%Y %m}", "literal text"),
    ("dt={ts:%Y/%m}", "literal text"),
    ("dt", "name=value"),
    ("dt={ts:%s}", "%Y %m %d"),
    ("dt=x", "placeholder"),
    ("partition={ts:%Y}", "taken by the layout"),
    ("_x={ts:%Y}", "column name"),
    ("d={ts:%Y}/d={ts:%m}", "twice"),
    ("dt={ts:%Y-%d}", "add %m"),
])
def test_a_bad_template_is_refused_with_what_to_do(bad: str, words: str) -> None:
    with pytest.raises(TemplateError, match=words):
        parse_template(bad)


def test_config_reports_a_bad_template_and_time_zone() -> None:
    problems = replace(BASE, partition_by="hr={ts:%H}").problems()
    assert any("add %Y" in p for p in problems)
    problems = replace(BASE, timezone="Mars/Olympus").problems()
    assert any("IANA" in p for p in problems)
    assert replace(BASE, partition_by=None, timezone="Europe/Berlin").problems() != []
    assert BASE.problems() == []


def _hour_label(ms: int, zone: ZoneInfo) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone).strftime("dt=%Y-%m-%d/hr=%H")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-2_000_000_000_000, 2_100_000_000_000), min_size=1, max_size=20),
       st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]))
def test_bucket_of_a_time_is_strftime_in_the_zone(ms: list[int], tz: str) -> None:
    t = parse_template("dt={ts:%Y-%m-%d}/hr={ts:%H}", tz)
    a = assign(t, pa.array(ms, pa.int64()))
    zone = ZoneInfo(tz)
    for m, b, end in zip(ms, a.buckets.to_pylist(), a.ends.to_pylist(), strict=True):
        assert b == _hour_label(m, zone)
        assert m < end <= m + 2 * 3600 * 1000  # after the row; an hour repeated in a DST fold: two
        # The bucket is the row's until its end, and not one millisecond longer.
        assert all(_hour_label(at, zone) == b for at in range(m, end, 15 * 60 * 1000))
        assert _hour_label(end - 1, zone) == b and _hour_label(end, zone) != b


def _utc_ms(*when: int) -> int:
    return int(datetime(*when, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(("tz", "row", "end"), [
    # Berlin, last Sunday of October: 03:00 CEST becomes 02:00 CET, so 02:00-03:00 happens twice.
    ("Europe/Berlin", _utc_ms(2024, 10, 26, 23, 30), _utc_ms(2024, 10, 27, 0)),  # 01:30 CEST: to 1st 02:00
    ("Europe/Berlin", _utc_ms(2024, 10, 27, 0, 30), _utc_ms(2024, 10, 27, 2)),  # 02:30 CEST: to 03:00 CET
    ("Europe/Berlin", _utc_ms(2024, 10, 27, 1, 30), _utc_ms(2024, 10, 27, 2)),  # 02:30 CET: the same bucket
    # Berlin, last Sunday of March: 02:00 CET becomes 03:00 CEST; 02:xx does not exist.
    ("Europe/Berlin", _utc_ms(2024, 3, 31, 0, 30), _utc_ms(2024, 3, 31, 1)),  # 01:30 CET: ends at the jump
    # New York: 02:00 EDT becomes 01:00 EST in November; 02:00 EST becomes 03:00 EDT in March.
    ("America/New_York", _utc_ms(2024, 11, 3, 4, 30), _utc_ms(2024, 11, 3, 5)),  # 00:30 EDT: the first 01:00
    ("America/New_York", _utc_ms(2024, 11, 3, 5, 30), _utc_ms(2024, 11, 3, 7)),  # 01:30 EDT: to 02:00 EST
    ("America/New_York", _utc_ms(2024, 3, 10, 6, 30), _utc_ms(2024, 3, 10, 7)),  # 01:30 EST: ends at the jump
])  # fmt: skip
def test_a_bucket_next_to_a_dst_change_ends_when_its_hour_ends(tz: str, row: int, end: int) -> None:
    """Rounding up to the hour lands on a local time that happens twice or not at all: Arrow's
    ceil_temporal on zoned times raised there, for every record of the hour before each change."""
    a = assign(parse_template("dt={ts:%Y-%m-%d}/hr={ts:%H}", tz), pa.array([row], pa.int64()))
    assert a.ends.to_pylist() == [end]
    assert a.buckets.to_pylist() == [_hour_label(row, ZoneInfo(tz))]


def test_null_and_impossible_times_have_no_bucket() -> None:
    a = assign(parse_template("y={ts:%Y}"), pa.array([0, None, 10**17], pa.int64()))
    assert a.buckets.to_pylist() == ["y=1970", None, None]
    assert [i for i, _ in a.reasons] == [1, 2] and "null" in a.reasons[0][1]


def test_layout_parses_bucketed_staging_keys_and_keeps_plain_keys() -> None:
    b = "dt=2026-11-30/hr=06"
    key = LAYOUT.piece_key("t", 3, 10, 10, 20, b)
    assert key == f"{PREFIX}/_staging/topic=t/partition=3/{b}/{10:020d}/{10:020d}-{20:020d}.piece"
    assert LAYOUT.parse_staging_key("t", 3, key) == PieceRef(10, 10, 20, key, 0, b)
    m = LAYOUT.roll_marker_key("t", 3, 10, 20, b)
    assert LAYOUT.parse_staging_key("t", 3, m) == RollMarker(10, 20, m, b)
    assert LAYOUT.final_key("t", 3, 10, b) == f"{PREFIX}/topic=t/{b}/partition=3/t+3+{10:020d}.parquet"
    assert LAYOUT.final_key("t", 3, 10) == f"{PREFIX}/topic=t/partition=3/t+3+{10:020d}.parquet"
    plain = LAYOUT.piece_key("t", 3, 10, 10, 20)
    assert LAYOUT.parse_staging_key("t", 3, plain) == PieceRef(10, 10, 20, plain, 0, "")


# -- the flush ------------------------------------------------------------------------------------
def test_a_flush_writes_one_piece_into_every_open_bucket_file_then_commits_once() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    ops: list[tuple[str, str]] = []
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(10))  # hours 0..4 → 5 buckets, one flush
    assert len(w.files) == 5 and positions.committed("t", 0) == 10
    store.on_op = lambda op, key: ops.append((op, key))
    positions.on_op = lambda op, *a: ops.append((op, ""))
    run(w, [10, 15])  # both hour 0 (10*7 % 5 == 0): one bucket touched
    w.flush()
    puts = [k for op, k in ops if op == "put_object"]
    assert len(puts) == 5 and all(k.endswith(f"{10:020d}-{16:020d}.piece") for k in puts)
    last_put = max(i for i, (op, _) in enumerate(ops) if op == "put_object")
    assert [op for op, _ in ops].index("commit") > last_put
    rows = {f.bucket: f.pieces[-1].rows for f in w.files.values()}
    assert rows == {"dt=2026-11-30/hr=04": 2, **{f"dt=2026-11-30/hr=0{h}": 0 for h in (5, 6, 7, 8)}}
    w.finish()
    check_exactly_once(store, 16, set(), [*range(10), 10, 15])
    assert staged(store) == []


def test_a_flush_puts_the_pieces_of_new_bucket_files_first() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, [0, 5])  # hour 0 only
    w.flush()
    ops: list[str] = []
    store.on_op = lambda op, key: ops.append(key) if op == "put_object" else None
    run(w, [6, 7])  # hours 2 and 4: new buckets
    w.flush()
    assert [k.split("/partition=0/")[1].split("/0")[0] for k in ops] == [
        "dt=2026-11-30/hr=06", "dt=2026-11-30/hr=08", "dt=2026-11-30/hr=04"]


# -- rolls ----------------------------------------------------------------------------------------
def test_a_bucket_rolls_once_the_watermark_passes_its_end_by_the_grace() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None, bucket_grace=1800.0))
    w.recover()
    run(w, [0, 5])  # hour 04
    w.flush()
    assert finals(store) == []
    run(w, [6])  # 6*7 % 5 == 2 → 06:00:06: the watermark is past 05:00 + 30 min
    w.flush()
    keys = [k for k, _ in finals(store)]
    assert keys == [f"{PREFIX}/topic=t/dt=2026-11-30/hr=04/partition=0/t+0+{0:020d}.parquet"]
    assert sorted(w.files) == ["dt=2026-11-30/hr=06"]


def test_stragglers_of_a_bucket_past_its_grace_gather_in_one_file_per_grace() -> None:
    """Records hours late for a bucket already final open a *late* file there, which the grace
    rule rolls only once it has been open for the grace: one file per grace interval, not one per
    flush. The lateness rides in the pieces, so a restart keeps it."""
    store, positions = MemoryStore(), MemoryPositions()
    now = [1000.0]
    cfg = replace(BASE, file_rows=None, bucket_grace=1800.0)
    w = make_worker(store, positions, cfg, clock=lambda: now[0])
    w.recover()
    run(w, [0])  # hour 04
    w.flush()
    run(w, [6])  # hour 06: the watermark passes 05:30, so hour 04 rolls
    w.flush()
    hr04 = f"{PREFIX}/topic=t/dt=2026-11-30/hr=04/partition=0/"
    assert [k for k, _ in finals(store)] == [f"{hr04}t+0+{0:020d}.parquet"]
    for i in (10, 15, 20):  # stragglers of hour 04, one flush each
        run(w, [i])
        w.flush()
        now[0] += 60
    late = w.files["dt=2026-11-30/hr=04"]
    assert late.late and late.start == 7 and late.rows == 3
    assert len(finals(store)) == 1  # not one final file per flush
    again = make_worker(store, positions, cfg, clock=lambda: now[0])
    again.recover()
    assert again.files["dt=2026-11-30/hr=04"].late
    now[0] += 1800  # the late file has been open for the grace: the next flush rolls it
    run(again, [21])  # hour 06
    again.flush()
    hr04_files = [(k, t) for k, t in finals(store) if k.startswith(hr04)]
    assert [k for k, _ in hr04_files] == [f"{hr04}t+0+{0:020d}.parquet", f"{hr04}t+0+{7:020d}.parquet"]
    assert hr04_files[1][1].column("kafka_offset").to_pylist() == [10, 15, 20]
    again.finish()
    check_exactly_once(store, 22, set(), sent=[0, 6, 10, 15, 20, 21])


def test_above_max_open_buckets_the_oldest_bucket_rolls() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None, max_open_buckets=2))
    w.recover()
    run(w, [0, 1, 3])  # 04, 06, 05
    w.flush()
    assert sorted(w.files) == ["dt=2026-11-30/hr=05", "dt=2026-11-30/hr=06"]
    folders = [k.split("topic=t/")[1].split("/partition")[0] for k, _ in finals(store)]
    assert folders == ["dt=2026-11-30/hr=04"]


def test_a_late_record_for_a_rolled_bucket_opens_a_new_file_there() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None, max_open_buckets=1))
    w.recover()
    run(w, [0])
    w.flush()  # hour 04 open
    run(w, [1])
    w.flush()  # hour 06 opens, 04 rolls
    run(w, [5])
    w.flush()  # hour 04 again: a new file from 2; 06 rolls
    w.finish()
    keys = [k for k, _ in finals(store)]
    assert f"{PREFIX}/topic=t/dt=2026-11-30/hr=04/partition=0/t+0+{0:020d}.parquet" in keys
    assert f"{PREFIX}/topic=t/dt=2026-11-30/hr=04/partition=0/t+0+{2:020d}.parquet" in keys
    assert sorted(o for _, t in finals(store) for o in t.column("kafka_offset").to_pylist()) == [0, 1, 5]


def test_each_bucket_file_rolls_on_its_own_row_budget() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=4, row_group_rows=2))
    w.recover()
    run(w, range(40))
    w.finish()
    check_exactly_once(store, 40, set())
    assert all(t.num_rows <= 4 for _, t in finals(store))


# -- bad times -------------------------------------------------------------------------------------
def test_a_null_time_goes_to_dead_letters_with_the_reason() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, partition_by="y={duration_ms:%Y}", file_rows=None))
    w.recover()
    for i in range(6):
        w.append(msg(i, duration=None if i == 3 else 1000))
    w.finish()
    assert dead_letter_offsets(store) == [3]
    line = next(json.loads(d) for k, d in store.objects.items() if "_dead_letters/" in k)
    assert "is null" in line["reason"] and line["value_b64"]
    offsets = sorted(o for _, t in finals(store) for o in t.column("kafka_offset").to_pylist())
    assert offsets == [0, 1, 2, 4, 5]
    assert positions.committed("t", 0) == 6


def test_a_null_time_halts_under_on_error_fail_with_everything_before_committed() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, partition_by="y={duration_ms:%Y}", on_error="fail",
                                              file_rows=None, row_group_rows=100))
    w.recover()
    for i in range(6):
        w.append(msg(i, duration=None if i == 3 else 1000))
    with pytest.raises(BadRecordStop, match="offset 3"):
        w.flush()
    assert positions.committed("t", 0) == 3 and w.state is PartitionState.HALTED
    assert dead_letter_offsets(store) == []


def test_a_schema_without_the_field_makes_dead_letters_not_guesses() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, partition_by="y={nope:%Y}", file_rows=None))
    w.recover()
    run(w, range(3))
    w.finish()
    assert dead_letter_offsets(store) == [0, 1, 2] and finals(store) == []
    assert positions.committed("t", 0) == 3


# -- recovery --------------------------------------------------------------------------------------
def test_restart_resumes_every_open_bucket_file() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(12))
    w.close()
    opened = {b: f.start for b, f in w.files.items()}
    w2 = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w2.recover() == 12
    assert {b: f.start for b, f in w2.files.items()} == opened
    assert all(f.bucket_end is not None for f in w2.files.values())
    run(w2, range(12, 20))
    w2.finish()
    check_exactly_once(store, 20, set())


def test_staged_pieces_deleted_by_someone_else_stop_recovery_with_nothing_changed() -> None:
    """The newest pieces of every open bucket file deleted (a lifecycle rule on _staging/): the
    commit's note says their rows were staged here, so recovery stops instead of reading the gap
    as a reset forwards; moved back to what S3 holds, every offset is exported once."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None, row_group_rows=4))
    w.recover()
    run(w, range(12))
    w.close()
    assert positions.positions[("t", 0)] == 12
    newest = [k for k in staged(store) if k.endswith("-00000000000000000012.piece")]
    assert newest
    for key in newest:
        del store.objects[key]
    left = dict(store.objects)
    w2 = make_worker(store, positions, replace(BASE, file_rows=None, row_group_rows=4))
    with pytest.raises(IntegrityError, match=r"the records \[8, 12\) are in no file"):
        w2.recover()
    assert store.objects == left and positions.positions[("t", 0)] == 12
    positions.reset("t", 0, 8)  # kafka-consumer-groups --reset-offsets --to-offset 8
    w3 = make_worker(store, positions, replace(BASE, file_rows=None, row_group_rows=4))
    assert w3.recover() == 8
    run(w3, range(8, 20))
    w3.finish()
    check_exactly_once(store, 20, set())


@pytest.mark.parametrize("before", ["nothing", "a rolled bucket file"])
def test_dead_letters_while_no_bucket_file_is_open_are_not_taken_for_deleted_staging(before: str) -> None:
    """A flush of bad records only, while no bucket file is open, writes dead letters and no
    piece: its commit must not say its rows were staged, or the next recovery would stop (exit 5)
    as if someone had deleted them."""
    store, positions = MemoryStore(), MemoryPositions()
    cfg = replace(BASE, file_rows=None, row_group_rows=4)
    first = 0
    if before == "a rolled bucket file":
        w = make_worker(store, positions, cfg)
        w.recover()
        run(w, range(8))
        w.finish()
        first = 8
    w = make_worker(store, positions, cfg)
    assert w.recover() == (first or None)  # None: a fresh start
    bad = set(range(first, first + 4))
    run(w, sorted(bad), bad=bad)
    w.flush()
    w.close()
    assert positions.positions[("t", 0)] == first + 4 and not staged(store)
    w2 = make_worker(store, positions, cfg)
    assert w2.recover() == first + 4
    run(w2, range(first + 4, first + 8))
    w2.finish()
    check_exactly_once(store, first + 8, bad)


def test_expired_offsets_adopt_the_lowest_end_of_the_open_bucket_files() -> None:
    """A crash mid-flush leaves new bucket files at `to` and some old ones at `from`."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, [0, 1])  # hours 04 and 06
    w.flush()
    run(w, [2, 3, 4])  # 08 (new), 05 (new), 07 (new)
    puts = 0

    def hook(op: str, key: str) -> None:
        nonlocal puts
        if op == "put_object" and key.endswith(".piece"):
            puts += 1
            if puts == 4:  # the three new files and one old one are written
                raise Crash("mid-flush")
    store.on_op = hook
    with pytest.raises(Crash):
        w.flush()
    store.on_op = None
    positions.reset("t", 0, None)  # offsets expired
    w2 = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w2.recover() == 2
    run(w2, range(2, 10))
    w2.finish()
    check_exactly_once(store, 10, set())


def test_expired_offsets_with_only_new_bucket_files_adopt_their_start() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, [0, 1, 2])
    store.on_op = _crash_at_piece(2)
    with pytest.raises(Crash):
        w.flush()  # two of three new files written, nothing committed
    store.on_op = None
    positions.reset("t", 0, None)
    w2 = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w2.recover() is None or w2.committed == 0
    run(w2, range(0, 6))
    w2.finish()
    check_exactly_once(store, 6, set())


@pytest.mark.parametrize("bad", [set(), {1}])
def test_expired_offsets_after_a_finished_first_flush_keep_its_rows(bad: set[int]) -> None:
    """One flush staged [0, 3) into new bucket files (and a dead letter) and committed 3; then the
    offsets expired (a group down past offsets.retention.minutes). Every record of [0, 3) is in a
    piece or a dead letter, so that flush finished: 3 is adopted and its pieces stay. Recovery used
    to go back to 0 and delete them: durable rows, which retention may have deleted from Kafka by
    then (found by tests/unit/test_group_history.py)."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, [0, 1, 2], bad=bad)
    w.flush()
    assert positions.committed("t", 0) == 3
    pieces = staged(store)
    positions.reset("t", 0, None)  # offsets expired
    w2 = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w2.recover() == 3
    assert staged(store) == pieces
    run(w2, range(3, 6))
    w2.finish()
    check_exactly_once(store, 6, bad)


def _ten_rolled() -> tuple[MemoryStore, MemoryPositions, PartitionWorker]:
    """Records 0..9 in final bucket files (none open, the rolled high-water 10), and a new
    worker recovered at 10."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(10))
    w.finish()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w.recover() == 10
    return store, positions, w


@pytest.mark.parametrize("flushes", [[range(10, 13)], [range(10, 12), range(12, 15)]])
def test_expired_offsets_after_flushes_of_bad_records_only_keep_their_dead_letters(
    flushes: list[range],
) -> None:
    """Every bucket file rolled, then flushes of bad records only: with no bucket file open each
    leaves its dead-letter object and nothing else, and commits. The offsets expire. Every offset
    of each object's range has its line, so those flushes finished: recovery adopts the end of the
    last one and keeps them. It used to adopt the rolled high-water (10) and delete them to read
    the records again, which lost them when retention had deleted the records from Kafka too."""
    store, positions, w = _ten_rolled()
    bad = {i for r in flushes for i in r}
    for r in flushes:
        run(w, r, bad=bad)
        w.flush()
    end = flushes[-1].stop
    assert positions.committed("t", 0) == end and staged(store) == []
    letters = sorted(k for k in store.objects if "_dead_letters/" in k)
    assert len(letters) == len(flushes)
    positions.reset("t", 0, None)  # offsets expired
    w2 = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w2.recover() == end
    assert positions.committed("t", 0) == end
    assert sorted(k for k in store.objects if "_dead_letters/" in k) == letters
    run(w2, range(end, end + 3))
    w2.finish()
    check_exactly_once(store, end + 3, bad)


def test_expired_offsets_after_a_dead_letter_object_with_gaps_read_its_range_again() -> None:
    """Offset 11 holds no record (a transaction marker): the object's two lines do not prove the
    flush of [10, 13) finished, so recovery goes back to the high-water and reads them again."""
    store, positions, w = _ten_rolled()
    run(w, [10, 12], bad={10, 12})
    w.flush(upto=13)
    assert positions.committed("t", 0) == 13
    positions.reset("t", 0, None)
    w2 = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w2.recover() == 10
    assert not [k for k in store.objects if "_dead_letters/" in k]


def test_a_bucket_file_deleted_whole_stops_recovery_and_a_reset_to_its_start_exports_it_again() -> None:
    """Ten records staged into five hours' files and committed (the note: staged here). Someone
    deletes every piece of one hour's file; the others still reach the position, so nothing else
    sees it, and its rows were skipped without a word. Every piece names the files its flush wrote
    into: recovery stops, naming that file, and changes nothing. The offset moved back to the
    file's start reads every bucket's rows from there again, each once."""
    store, positions = MemoryStore(), MemoryPositions()
    cfg = replace(BASE, file_rows=None)
    w = make_worker(store, positions, cfg)
    w.recover()
    run(w, range(10))
    w.flush()
    assert positions.committed("t", 0) == 10
    files = {k.rsplit("/", 2)[0] for k in staged(store)}
    assert len(files) == 5
    doomed = sorted(files)[2]
    for key in [k for k in staged(store) if k.startswith(doomed + "/")]:
        del store.objects[key]
    before = dict(store.objects)
    with pytest.raises(IntegrityError, match=r"deleted by someone else.*offset back to 0"):
        make_worker(store, positions, cfg).recover()
    assert store.objects == before
    positions.reset("t", 0, 0)  # kafka-consumer-groups --reset-offsets --to-offset 0: no note
    w2 = make_worker(store, positions, cfg)
    assert w2.recover() == 0
    run(w2, range(15))
    w2.finish()
    check_exactly_once(store, 15, set())


def test_pieces_written_before_the_file_list_was_recorded_turn_the_check_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A piece of an earlier version names no files (no ``consumer.flush_files``): recovery cannot
    tell a bucket file deleted whole and goes on as that version did, rather than stop on what
    it cannot know."""
    store, positions = MemoryStore(), MemoryPositions()
    cfg = replace(BASE, file_rows=None)
    w = make_worker(store, positions, cfg)
    w.recover()
    monkeypatch.setattr("consumer.worker.FLUSH_FILES_KEY", "consumer.some_other_key")
    run(w, range(10))
    w.flush()
    monkeypatch.undo()
    doomed = sorted({k.rsplit("/", 2)[0] for k in staged(store)})[2]
    for key in [k for k in staged(store) if k.startswith(doomed + "/")]:
        del store.objects[key]
    assert make_worker(store, positions, cfg).recover() == 10


def _ten_flushed_at_two_open_buckets() -> tuple[MemoryStore, MemoryPositions, Config]:
    """One flush of [0, 10) into five hours' files at --max-open-buckets 2: the three oldest roll
    right after it commits, two stay open."""
    store, positions = MemoryStore(), MemoryPositions()
    cfg = replace(BASE, file_rows=None, max_open_buckets=2)
    w = make_worker(store, positions, cfg)
    w.recover()
    run(w, range(10))
    w.flush()
    return store, positions, cfg


def test_a_bucket_file_rolled_after_the_flush_is_not_taken_for_a_deleted_one() -> None:
    """max-open-buckets 2 rolls the oldest files right after the flush that committed the position:
    their final files end there, and recovery goes on."""
    store, positions, cfg = _ten_flushed_at_two_open_buckets()
    assert finals(store) and staged(store)
    w2 = make_worker(store, positions, cfg)
    assert w2.recover() == 10
    run(w2, range(10, 15))
    w2.finish()
    check_exactly_once(store, 15, set())


def test_a_bucket_file_deleted_after_another_one_rolled_stops_recovery() -> None:
    """The same flush, then one of the two files it left open is deleted from _staging/. The rolls'
    re-commits said "rolled", which turned the check off: recovery resumed the other file at 10
    and that hour's rows were lost without a word (found by tests/unit/test_group_history.py).
    While other bucket files stay open a roll's re-commit says "staged": recovery stops and changes
    nothing. The rolled hour refuses a reset to the file's start, so the operator exports that
    range to another prefix and commits 10 by hand (no note): the run goes on from there."""
    store, positions, cfg = _ten_flushed_at_two_open_buckets()
    open_files = sorted({k.rsplit("/", 2)[0] for k in staged(store)})
    assert len(open_files) == 2 and positions.committed("t", 0) == 10
    lost: set[int] = set()
    for key in [k for k in staged(store) if k.startswith(open_files[0] + "/")]:
        lost.update(pq.read_table(io.BytesIO(store.objects.pop(key))).column("kafka_offset").to_pylist())
    assert lost
    before = dict(store.objects)
    with pytest.raises(IntegrityError, match=r"deleted by someone else"):
        make_worker(store, positions, cfg).recover()
    assert store.objects == before
    positions.reset("t", 0, 10)
    assert make_worker(store, positions, cfg).recover() == 10
    # That recovery resumed the other open file without giving the position a "staged" note (a
    # file of its flush is gone): the operator's answer holds at the next restart too.
    assert positions.note("t", 0) == ""
    w2 = make_worker(store, positions, cfg)
    assert w2.recover() == 10
    run(w2, range(10, 15))
    w2.finish()
    offsets = sorted(o for _k, t in finals(store) for o in t.column("kafka_offset").to_pylist())
    assert offsets == sorted(set(range(15)) - lost)


def test_every_open_bucket_file_deleted_after_another_rolled_stops_recovery() -> None:
    """The same flush, then a lifecycle rule on _staging/ deletes every staged object: the two
    files still open are gone, and the rolled high-water (10) reached the position, so recovery
    took the rolled files for all there was and went on (found by tests/unit/test_group_history.py).
    A roll's re-commit says "staged" only while other files stay open, so with that note some
    staged piece must reach the position: stop, naming the replay route, and change nothing."""
    store, positions, cfg = _ten_flushed_at_two_open_buckets()
    for key in staged(store):
        del store.objects[key]
    before = dict(store.objects)
    with pytest.raises(IntegrityError, match=r"a bucket file rolled at the committed position 10 while "
                       r"other bucket files stayed open, and S3 holds no staged piece of those any more"):
        make_worker(store, positions, cfg).recover()
    assert store.objects == before


def _two_flushes_into_five_hours() -> tuple[MemoryStore, MemoryPositions, Config]:
    """Flushes [0, 5) and [5, 10) into five hours' files, all open, 10 committed."""
    store, positions = MemoryStore(), MemoryPositions()
    cfg = replace(BASE, file_rows=None)
    w = make_worker(store, positions, cfg)
    w.recover()
    run(w, range(5))
    w.flush()
    run(w, range(5, 10))
    w.flush()
    return store, positions, cfg


def test_a_forward_reset_never_takes_a_file_that_lost_its_first_piece_for_a_zombies() -> None:
    """Two flushes, [0, 5) and [5, 10), into five hours' files; a clean-up deletes the first piece
    of one of them, and the operator moves the offset forward to 12 (no note). The other files
    chain to 10, and are finished. That one's piece [5, 10) chains to nothing: recovery took it
    for a fenced member's leftovers and deleted it ("their rows are in the owner's files"), and
    offset 5, durable, committed, and in no other file, was lost (found by
    tests/unit/test_group_history.py). A piece ending where the others reach, in a file without a
    chain to it, lost the piece before it: stop (status 5), and change nothing."""
    store, positions, cfg = _two_flushes_into_five_hours()
    hour0 = sorted({k.rsplit("/", 2)[0] for k in staged(store)})[0]
    first = [k for k in staged(store) if k.startswith(hour0 + "/") and k.endswith(f"-{5:020d}.piece")]
    assert len(first) == 1
    del store.objects[first[0]]
    positions.reset("t", 0, 12)
    before = dict(store.objects)
    with pytest.raises(IntegrityError, match=r"do not chain to it and no final file holds them: \[5, 10\)"):
        make_worker(store, positions, cfg).recover()
    assert store.objects == before


def test_a_file_of_the_last_flush_that_lost_its_newest_piece_keeps_its_rows_without_a_note() -> None:
    """Two flushes into five hours' files, the offset re-set where it was (no note), then a
    clean-up deletes hour 04's newest piece [5, 10). With no note that is what a reset forwards
    leaves. The other files reach 10, and that file's chain [0, 5) was deleted as a fenced
    member's leftovers: offset 0, durable and committed, was lost (found by
    tests/unit/test_group_history.py). The pieces ending at 10 name that file as one their flush
    wrote into: it is the owner's, so its chain is finished as a forward reset's, and only the
    deleted piece's record is missing."""
    store, positions, cfg = _two_flushes_into_five_hours()
    positions.reset("t", 0, 10)  # kafka-consumer-groups --reset-offsets --to-offset 10: no note
    hour04 = sorted({k.rsplit("/", 2)[0] for k in staged(store)})[0]
    newest = [k for k in staged(store) if k.startswith(hour04 + "/") and k.endswith(f"-{10:020d}.piece")]
    lost = pq.read_table(io.BytesIO(store.objects.pop(newest[0]))).column("kafka_offset").to_pylist()
    assert lost == [5]
    w2 = make_worker(store, positions, cfg)
    assert w2.recover() == 10
    w2.finish()
    offsets = sorted(o for _k, t in finals(store) for o in t.column("kafka_offset").to_pylist())
    assert offsets == [i for i in range(10) if i != 5]


def _crash_at_piece(n: int) -> Callable[[str, str], None]:
    seen = 0

    def hook(op: str, key: str) -> None:
        nonlocal seen
        if op == "put_object" and key.endswith(".piece"):
            seen += 1
            if seen == n + 1:
                raise Crash("mid-flush")
    return hook


def test_a_forward_reset_after_a_flush_cut_short_keeps_the_committed_rows() -> None:
    """Hours 04 and 06 staged to 2 and committed. The next flush opens hour 08's file at 2 and
    writes its piece [2, 6) first (files opened by a flush are written first), then dies before
    the others; 2 stays committed. The operator moves the offset forward to 10 (no note). With no
    file reaching 10, recovery anchors the owner's files at the newest chain end, 6: the cut
    flush's new file. Hours 04 and 06, which chain to 2 only, are taken for a fenced member's
    leftovers and deleted, and offsets 0 and 1, committed, were in no file. The anchor is now
    the highest end every file reaches (or starts after): 2."""
    store, positions = MemoryStore(), MemoryPositions()
    cfg = replace(BASE, file_rows=None)
    w = make_worker(store, positions, cfg)
    w.recover()
    run(w, [0, 1])  # hours 04 and 06
    w.flush()
    run(w, [2, 5])  # hour 08 (a new file), hour 04
    store.on_op = _crash_at_piece(1)
    with pytest.raises(Crash):
        w.flush()
    store.on_op = None
    assert positions.committed("t", 0) == 2
    positions.reset("t", 0, 10)  # kafka-consumer-groups --reset-offsets --to-offset 10
    w2 = make_worker(store, positions, cfg)
    assert w2.recover() == 10
    w2.finish()
    offsets = sorted(o for _k, t in finals(store) for o in t.column("kafka_offset").to_pylist())
    assert {0, 1} <= set(offsets)


def test_a_backward_reset_below_a_rolled_bucket_is_refused_via_the_high_water() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(10))
    w.finish()
    assert staged(store) == [] and positions.committed("t", 0) == 10
    rolled = [k for k in store.objects if "/_rolled/" in f"/{k}"]
    assert rolled == [f"{PREFIX}/_rolled/topic=t/partition=0/{10:020d}"]
    positions.reset("t", 0, 4)
    before = dict(store.objects)
    with pytest.raises(IntegrityError, match="below the end 10"):
        make_worker(store, positions).recover()
    assert store.objects == before


def test_a_zombie_s_bucket_file_is_deleted_not_published() -> None:
    """A fenced member opened a bucket file at its own flush boundary: recovery deletes it."""
    store, positions = MemoryStore(), MemoryPositions()
    owner = make_worker(store, positions, replace(BASE, file_rows=None))
    owner.recover()
    run(owner, range(4))
    owner.flush()  # committed 4
    # A zombie (same committed 4) flushes [4, 6) with hour 04 → a file it opened at 4.
    zombie = make_worker(store, positions, replace(BASE, file_rows=None))
    zombie.recover()
    positions.fence("t", 0)
    run(zombie, [4, 5])
    with pytest.raises(PartitionFenced):
        zombie.flush()
    positions.unfence("t", 0)
    run(owner, range(4, 12))
    owner.close()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w.recover() == 12
    run(w, range(12, 15))
    w.finish()
    check_exactly_once(store, 15, set())
    assert staged(store) == []


def test_recovery_never_deletes_bucket_pieces_another_group_wrote() -> None:
    """As in the plain layout: pieces past this run's position may hold another group's committed
    rows. Stop, name the group, delete nothing."""
    store = MemoryStore()
    a = make_worker(store, MemoryPositions(), replace(BASE, group_id="a", file_rows=None))
    a.recover()
    run(a, range(30))  # three flushes into every open bucket file, committed 30 in group "a"
    before = staged(store)
    positions = MemoryPositions()
    positions.reset("t", 0, 10)
    b = make_worker(store, positions, replace(BASE, group_id="b", file_rows=None))
    with pytest.raises(IntegrityError, match=r"would delete the staged piece \[10, 20\) of bucket "
                       r"dt=.* past this run's position 10, but it was written by consumer group 'a' "
                       r"\(this run is group 'b'\)"):
        b.recover()
    assert staged(store) == before and positions.committed("t", 0) == 10


def test_a_zombie_bucket_file_of_another_group_is_not_deleted() -> None:
    """The zombie rule deletes a whole bucket file that does not chain to the position, below it
    too. Written by another group, it is that group's: stop instead."""
    store, positions = MemoryStore(), MemoryPositions()
    owner = make_worker(store, positions, replace(BASE, file_rows=None))
    owner.recover()
    run(owner, range(4))
    owner.flush()  # committed 4
    other = make_worker(store, positions, replace(BASE, group_id="z", file_rows=None))
    other.recover()
    run(other, [4, 5])
    other.flush()  # "z" opens a bucket file at 4 and (sharing the doubles' positions) commits 6
    positions.reset("t", 0, 4)
    run(owner, range(4, 12))
    owner.close()  # committed 12: its own files chain to 12, the file "z" opened at 4 does not
    before = staged(store)
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    with pytest.raises(IntegrityError, match=r"of a file that does not chain to this run's position 12, "
                       r"but it was written by consumer group 'z' \(this run is group 'g'\)"):
        w.recover()
    assert staged(store) == before


# -- every store request is a crash point ----------------------------------------------------------
UPTO = 12
BAD = {5}


def scenario(store: MemoryStore, positions: MemoryPositions, *, upto: int) -> None:
    """Recover, consume [committed, upto) in shuffled time order (5 hours interleaved) with a bad
    record, 4-row groups, 6-row files, at most 2 open buckets (so rolls by the bound and by rows
    happen mid-run), finish."""
    cfg = replace(BASE, file_rows=6, row_group_rows=4, max_open_buckets=2, bucket_grace=3600.0)
    w = make_worker(store, positions, cfg)
    start = w.recover() or 0
    run(w, range(start, upto), bad=BAD)
    w.finish()


def count_requests(upto: int) -> int:
    store = MemoryStore()
    scenario(store, MemoryPositions(), upto=upto)
    return sum(store.stats.requests.values())


def crash_points() -> Iterator[int]:
    yield from range(1, count_requests(UPTO) + 1)


@pytest.mark.parametrize("n", list(crash_points()))
def test_a_crash_at_any_store_request_of_a_bucketed_run_keeps_every_offset_exactly_once(n: int) -> None:
    store, positions = MemoryStore(), MemoryPositions()
    store.on_op = crash_at_request(n)
    with pytest.raises(Crash):
        scenario(store, positions, upto=UPTO)
    store.on_op = None
    scenario(store, positions, upto=UPTO)
    check_exactly_once(store, UPTO, BAD)
    assert staged(store) == []
    assert positions.committed("t", 0) == UPTO


# -- consumer verify on the bucketed layout ----------------------------------------------------------
def test_verify_checks_a_bucketed_output_exactly_and_finds_a_row_in_the_wrong_bucket() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=4, row_group_rows=2, max_open_buckets=2))
    w.recover()
    run(w, range(30), bad={7})
    w.finish()
    report = verify(store, PREFIX, "t", committed={0: 30}, partition_by=TEMPLATE)
    assert report.ok, report.to_text()
    assert report.partitions[0].missing_count == 0 and report.partitions[0].duplicate_count == 0
    # Without the template the bucket folders are not the plain layout: refused, not misread.
    assert not verify(store, PREFIX, "t", committed={0: 30}).ok
    # A file moved into another hour's folder: every row of it is in the wrong bucket.
    key = next(k for k, _ in finals(store) if "hr=04" in k)
    store.objects[key.replace("hr=04", "hr=09")] = store.objects.pop(key)
    report = verify(store, PREFIX, "t", committed={0: 30}, partition_by=TEMPLATE)
    assert not report.ok and any("not in bucket" in why for _, why in report.bad_files)


# -- an operator changes the layout while files are open -------------------------------------------
@pytest.mark.parametrize(
    ("before", "after"),
    [(None, TEMPLATE), (TEMPLATE, None), (TEMPLATE, "dt={ts:%Y-%m-%d}")],
    ids=["plain-to-bucketed", "bucketed-to-plain", "template-changed"],
)
def test_changing_the_layout_with_open_files_stops_and_touches_nothing(
    before: str | None, after: str | None
) -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None, partition_by=before))
    w.recover()
    run(w, range(12))
    w.close()  # rows durable and committed, files open (staged)
    snapshot = dict(store.objects)
    committed = positions.committed("t", 0)
    w2 = make_worker(store, positions, replace(BASE, file_rows=None, partition_by=after))
    with pytest.raises(UsageError, match=r"staged \(open\) files were written .* new --output prefix") as err:
        w2.recover()
    assert err.value.status == 2
    assert store.objects == snapshot and positions.committed("t", 0) == committed
    # Back under the layout that wrote them, the files finish: every row exactly once.
    w3 = make_worker(store, positions, replace(BASE, file_rows=None, partition_by=before))
    assert w3.recover() == 12
    w3.finish()
    assert not staged(store)
    rows = sorted(o for _k, t in finals(store) for o in t.column("kafka_offset").to_pylist())
    assert rows == list(range(12))


def test_changing_the_layout_once_every_file_is_final_is_allowed() -> None:
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None, partition_by=None))
    w.recover()
    run(w, range(12))
    w.finish()
    w2 = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w2.recover() == 12
    run(w2, range(12, 20))
    w2.finish()
    rows = sorted(o for _k, t in finals(store) for o in t.column("kafka_offset").to_pylist())
    assert rows == list(range(20))


def test_a_backward_reset_inside_a_row_group_stops_and_one_onto_a_boundary_reads_again() -> None:
    """Per bucket as in the plain layout: 45 is inside every open file's piece [40, 50)."""
    store, positions = MemoryStore(), MemoryPositions()
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    w.recover()
    run(w, range(100))
    positions.reset("t", 0, 45)
    with pytest.raises(IntegrityError, match=r"inside the durable row group \[40, 50\)"):
        make_worker(store, positions, replace(BASE, file_rows=None)).recover()
    positions.reset("t", 0, 40)
    w = make_worker(store, positions, replace(BASE, file_rows=None))
    assert w.recover() == 40
    run(w, range(40, 120))
    w.finish()
    check_exactly_once(store, 120, set())
