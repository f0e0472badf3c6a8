"""Unit tests for consumer.arena: raw append → chunked decode → drain, dead letters, sizing.

fastavro (decode each body, convert with RecordConverter) is the reference the drained table
must equal. No Kafka or S3: the arena only sees bodies and coordinates.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any

import fastavro
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer import samples
from consumer.arena import Arena, DeadLetter, SchemaStats, kafka_fields
from consumer.decoding import WriterSchema
from consumer.typemap import RecordConverter

COLUMNS = ["partition", "offset", "timestamp", "key"]
CHUNK = 64
NAME = "page_view"
SCHEMA = samples.load_schema(NAME)
PARSED = samples.parsed_schema(NAME)
WRITER = WriterSchema.of(SCHEMA)
CONVERTER = RecordConverter(SCHEMA, kafka_fields(COLUMNS))
AVRO_NAMES = [f["name"] for f in SCHEMA["fields"]]


def make_arena(on_error: str = "dead-letter", chunk_rows: int = CHUNK) -> Arena:
    return Arena(
        WRITER, CONVERTER, SchemaStats.from_schema(SCHEMA),
        topic="page_views", partition=3, kafka_columns=COLUMNS, chunk_rows=chunk_rows,
        on_error=on_error,
    )


def bodies(n: int, seed: int = 0) -> list[bytes]:
    return [samples.encode_raw(PARSED, r) for r in samples.generate(NAME, n, seed=seed)]


def coords(i: int) -> tuple[int, int | None, bytes | None]:
    """(offset, timestamp, key) for record i: offsets with gaps, some null timestamps/keys."""
    return 1000 + 3 * i, None if i % 7 == 0 else 1_700_000_000_000 + i, None if i % 5 == 0 else b"k%d" % i


def feed(arena: Arena, data: list[bytes]) -> Iterator[int]:
    for i, body in enumerate(data):
        offset, ts, key = coords(i)
        arena.append(body, offset, ts, key)
        yield i


def decode(body: bytes) -> dict[str, Any]:
    record = fastavro.schemaless_reader(io.BytesIO(body), PARSED, None)
    assert isinstance(record, dict)
    return record


def reference(data: list[bytes]) -> pa.Table:
    records = [decode(b) for b in data]
    plain = RecordConverter(SCHEMA)
    return pa.Table.from_batches([plain.to_batch(records)])


def same_values(table: pa.Table, expected: pa.Table) -> bool:
    """Same Avro columns, types and values (chunking and dictionary batches may differ)."""
    got = table.select(AVRO_NAMES)
    return bool(got.schema == expected.schema and got.to_pylist() == expected.to_pylist())


def is_bad(body: bytes) -> bool:
    bio = io.BytesIO(body)
    try:
        fastavro.schemaless_reader(bio, PARSED, None)
    except Exception:
        return True
    return bio.tell() != len(body)


# -- append + drain ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, CHUNK - 1, CHUNK, 3 * CHUNK + 17])
def test_drain_returns_every_row_in_order(n: int) -> None:
    data = bodies(n)
    arena = make_arena()
    for _ in feed(arena, data):
        pass
    assert arena.rows == n
    assert arena.avro_bytes == sum(map(len, data))
    table, dead, arrow_bytes = arena.drain()
    assert dead == []
    assert table.num_rows == n
    assert table.schema == CONVERTER.schema
    assert table.column("kafka_offset").to_pylist() == [coords(i)[0] for i in range(n)]
    assert table.column("kafka_partition").to_pylist() == [3] * n
    assert table.column("kafka_key").to_pylist() == [coords(i)[2] for i in range(n)]
    ts = [coords(i)[1] for i in range(n)]
    assert table.column("kafka_timestamp").cast(pa.int64()).to_pylist() == ts
    assert same_values(table, reference(data))
    assert (arrow_bytes > 0) if n else (arrow_bytes == 0)
    assert arena.rows == 0
    assert arena.drain()[0].num_rows == 0


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 200), chunk_rows=st.integers(1, 70), seed=st.integers(0, 1000))
def test_drain_equals_fastavro_reference(n: int, chunk_rows: int, seed: int) -> None:
    data = bodies(n, seed)
    arena = make_arena(chunk_rows=chunk_rows)
    for _ in feed(arena, data):
        pass
    table, dead, _ = arena.drain()
    assert dead == []
    assert table.num_rows == n
    assert table.column("kafka_offset").to_pylist() == [coords(i)[0] for i in range(n)]
    assert same_values(table, reference(data))


def test_several_row_groups_from_one_arena() -> None:
    arena = make_arena()
    all_offsets: list[int] = []
    for group in range(3):
        data = bodies(100, seed=group)
        for i, body in enumerate(data):
            arena.append(body, group * 1000 + i, None, None)
        table, _, _ = arena.drain()
        assert table.num_rows == 100
        assert same_values(table, reference(data))
        all_offsets += table.column("kafka_offset").to_pylist()
    assert all_offsets == [g * 1000 + i for g in range(3) for i in range(100)]


# -- bad records ---------------------------------------------------------------------------------

BAD_AT = {5: "truncated", 70: "trailing", 71: "empty", 150: "truncated"}


def corrupt(body: bytes, how: str) -> bytes:
    if how == "truncated":
        return body[: len(body) // 2]
    if how == "trailing":
        return body + b"\x00"
    return b""


def with_bad(n: int) -> list[bytes]:
    data = bodies(n)
    for i, how in BAD_AT.items():
        data[i] = corrupt(data[i], how)
        assert is_bad(data[i])
    return data


def test_bad_bodies_become_dead_letters() -> None:
    n = 200
    data = with_bad(n)
    arena = make_arena("dead-letter")
    for _ in feed(arena, data):
        pass
    assert arena.rows == n - len(BAD_AT)  # every bad one sat in a decoded chunk (n > 192)
    table, dead, _ = arena.drain()
    good = [i for i in range(n) if i not in BAD_AT]
    assert table.num_rows == len(good)
    assert table.column("kafka_offset").to_pylist() == [coords(i)[0] for i in good]
    assert same_values(table, reference([data[i] for i in good]))
    assert [d.offset for d in dead] == [coords(i)[0] for i in sorted(BAD_AT)]
    for d, i in zip(dead, sorted(BAD_AT), strict=True):
        assert isinstance(d, DeadLetter)
        assert d.value == data[i]
        assert d.key == coords(i)[2]
        assert d.timestamp == coords(i)[1]
        assert d.reason.startswith("malformed Avro")
        if BAD_AT[i] == "trailing":
            assert "1 trailing bytes" in d.reason
    assert arena.halted is None
    assert arena.drain()[1] == []  # dead letters are handed over once


@pytest.mark.parametrize("first_bad", [0, 5, 63, 64, 70, 130])
def test_fail_mode_halts_at_the_first_bad_record(first_bad: int) -> None:
    n = 200
    data = bodies(n)
    data[first_bad] = corrupt(data[first_bad], "trailing")
    if first_bad + 3 < n:
        data[first_bad + 3] = corrupt(data[first_bad + 3], "truncated")  # a second one, same chunk
    arena = make_arena("fail")
    for _ in feed(arena, data):
        if arena.halted is not None:  # what the worker does: stop appending at once
            break
    assert arena.halted is not None
    assert arena.halted.offset == coords(first_bad)[0]
    assert arena.halted.value == data[first_bad]
    assert "trailing" in arena.halted.reason
    assert arena.rows == first_bad
    table, dead, _ = arena.drain()
    assert dead == []
    assert table.num_rows == first_bad
    assert table.column("kafka_offset").to_pylist() == [coords(i)[0] for i in range(first_bad)]
    assert same_values(table, reference(data[:first_bad]))


# -- memory -----------------------------------------------------------------------------------------


def test_raw_buffer_is_reused_across_chunks_and_released_when_drained() -> None:
    """Within a row group the raw buffer is rewound per chunk, not reallocated; a drained (idle)
    arena holds no buffer, so hundreds of idle partitions cost no memory (issue 8, item 10)."""
    data = bodies(3 * CHUNK + 5)
    arena = make_arena()
    for _ in feed(arena, data[:CHUNK]):
        pass
    size, raw_id = len(arena._raw), id(arena._raw)
    assert size > 0
    for _ in feed(arena, data[CHUNK:]):
        pass
    assert id(arena._raw) == raw_id and len(arena._raw) == size
    held = arena.nbytes
    arena.drain()
    assert len(arena._raw) == 0
    assert arena.nbytes == 0 < held


def test_same_size_records_never_grow_the_buffer() -> None:
    body = bodies(1)[0]
    arena = make_arena()
    arena.append(body, 0, None, None)
    size = len(arena._raw)
    for i in range(1, 10 * CHUNK):
        arena.append(body, i, None, None)
        assert len(arena._raw) == size
    assert arena.drain()[0].num_rows == 10 * CHUNK


def test_nbytes_counts_what_is_held_and_is_zero_when_idle() -> None:
    arena = make_arena()
    assert arena.nbytes == 0  # an idle arena holds nothing
    for _ in feed(arena, bodies(5 * CHUNK)):
        pass
    full = arena.nbytes
    assert full > 0
    arena.drain()
    assert arena.nbytes == 0


def test_nbytes_counts_what_native_batches_hold_not_only_their_lengths() -> None:
    """arrow-avro builds every column in a buffer of at least 1,024 values that doubles as it
    grows: a decoded chunk of a few rows holds several times its length. The budget must see it
    (200 partitions of such chunks once held 1.4x what was counted)."""
    arena = make_arena(chunk_rows=8)
    for _ in feed(arena, bodies(4 * 8)):
        pass
    assert arena._native is not None, "the native decoder is the default"
    length = sum(b.get_total_buffer_size() for b in arena._batches)
    assert arena.nbytes >= length + 4 * 1024 * 8  # >= 1,024 int64 slots per chunk, at least
    python = make_arena(chunk_rows=8)
    python.decoder = "python"
    for _ in feed(python, bodies(4 * 8)):
        pass
    assert python.nbytes == len(python._raw) + python._key_bytes + sum(
        b.get_total_buffer_size() for b in python._batches
    )


def test_nbytes_counts_dead_letter_payloads() -> None:
    arena = make_arena()
    base = arena.nbytes
    big = bodies(1)[0] + b"\x00" * 5000  # trailing bytes: a dead letter holding 5 KB
    arena.append(big, 0, None, None)
    arena.decode_pending()
    assert arena.nbytes >= base + len(big)


# -- SchemaStats --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", samples.schema_names())
def test_schema_stats_estimates_are_plausible(name: str) -> None:
    schema = samples.load_schema(name)
    stats = SchemaStats.from_schema(schema)
    assert math.isfinite(stats.avro_bytes_per_row) and stats.avro_bytes_per_row > 0
    assert math.isfinite(stats.arrow_per_avro) and stats.arrow_per_avro > 0
    assert 0 < stats.parquet_per_arrow <= 1
    parsed = samples.parsed_schema(name)
    sizes = [len(samples.encode_raw(parsed, r)) for r in samples.generate(name, 100)]
    mean = sum(sizes) / len(sizes)
    # shape-only estimate: the right order of magnitude (order.avsc is the loosest, ~9x high)
    assert mean / 10 <= stats.avro_bytes_per_row <= mean * 10, (name, stats.avro_bytes_per_row, mean)


def _batch(n: int) -> pa.RecordBatch:
    data = bodies(n)
    records = [decode(b) for b in data]
    return RecordConverter(SCHEMA).to_batch(records)


def test_observe_batch_moves_toward_observed() -> None:
    stats = SchemaStats.from_schema(SCHEMA)
    batch = _batch(50)
    observed = 100.0
    stats.observe_batch(batch, int(observed * 50))
    assert stats.avro_bytes_per_row == pytest.approx(observed)  # first observation replaces
    assert stats.rows_seen == 50
    assert stats.arrow_per_avro == pytest.approx(batch.get_total_buffer_size() / (observed * 50))
    assert "attributes" in stats.map_entries_per_row
    assert stats.null_fraction["duration_ms"] >= 0
    previous = stats.avro_bytes_per_row
    for target in (300.0, 300.0, 300.0):
        stats.observe_batch(batch, int(target * 50))
        assert previous < stats.avro_bytes_per_row < target
        previous = stats.avro_bytes_per_row
    stats.observe_batch(batch.slice(0, 0), 0)  # an empty batch changes nothing
    assert stats.avro_bytes_per_row == previous


@settings(max_examples=50, deadline=None)
@given(start=st.floats(1, 10_000), observed=st.lists(st.floats(1, 10_000), min_size=1, max_size=10))
def test_observe_batch_stays_between_old_and_new(start: float, observed: list[float]) -> None:
    batch = _BATCH
    stats = SchemaStats(avro_bytes_per_row=start, arrow_per_avro=1.0, rows_seen=1)
    for value in observed:
        old = stats.avro_bytes_per_row
        stats.observe_batch(batch, round(value * batch.num_rows))
        new = round(value * batch.num_rows) / batch.num_rows
        lo, hi = min(old, new), max(old, new)
        assert lo - 1e-9 <= stats.avro_bytes_per_row <= hi + 1e-9
        if abs(old - new) > 1e-6 * max(old, new):
            assert abs(stats.avro_bytes_per_row - new) < abs(old - new)


_BATCH = _batch(20)


def test_observe_encoded_replaces_the_guess_then_moves_parquet_ratio() -> None:
    stats = SchemaStats.from_schema(SCHEMA)
    stats.observe_encoded(1000, 100)  # the first real ratio replaces the shape-based guess
    assert stats.parquet_per_arrow == 0.1
    stats.observe_encoded(1000, 500)  # later ones are blended in
    assert 0.1 < stats.parquet_per_arrow < 0.5
    before = stats.parquet_per_arrow
    stats.observe_encoded(0, 100)  # ignored
    assert stats.parquet_per_arrow == before


def test_predicted_encoded_bytes_grows_with_rows() -> None:
    arena = make_arena()
    assert arena.predicted_encoded_bytes == 0
    predictions: list[float] = []
    for i in feed(arena, bodies(4 * CHUNK)):
        p = arena.predicted_encoded_bytes
        if predictions and (i % CHUNK) != CHUNK - 1:
            assert p > predictions[-1], i  # within a chunk every append adds
        predictions.append(p)
    # at chunk boundaries the estimate is replaced by the exact Arrow size: still growing
    boundary = [predictions[k * CHUNK - 1] for k in range(1, 5)]
    assert boundary == sorted(boundary) and len(set(boundary)) == 4
    assert predictions[-1] > 0



@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=300))
def test_any_negative_is_min_below_zero(values: list[int]) -> None:
    """The per-chunk "a record without a timestamp" check, done without pyarrow.compute."""
    import array

    from consumer.arena import any_negative

    assert any_negative(array.array("q", values)) == (bool(values) and min(values) < 0)
