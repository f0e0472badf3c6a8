"""Check an output prefix against Kafka: no loss, no duplicates, only valid final files.

This is the invariants of docs/DESIGN (no loss below the committed position, each offset in exactly
one final file, final files valid or absent) turned into a command users can run against a
production bucket, so it is built to be cheap there:

* Only the Parquet footers and the ``kafka_partition``/``kafka_offset`` column chunks are fetched —
  one tail GET and one or two ranged GETs per file, never the data columns — and files are read
  concurrently, because S3 latency, not CPU, dominates.
* Offsets are kept as Arrow arrays and compared with Arrow compute (sort, neighbour compare,
  hash ``is_in``), so millions of offsets per partition cost seconds, not Python-loop minutes.
* The expected offsets are by default read from Kafka (keys and values cannot be skipped by the
  broker, but nothing is decoded), because compacted topics and transaction markers leave gaps in
  the offset sequence: "every offset in [low, committed)" would report those gaps as loss.
  ``contiguous=True`` trusts the sequence to be gap-free and skips that read.

Ordering matters against a *live* consumer: the committed positions are read first, then the
staging area is listed, then the final files. Commits only move forward, and a roll writes the
final file before deleting its pieces, so every offset below the positions read is found in a
piece or a final file we list — a live consumer never produces a false "missing". Offsets that are
only in staged pieces count as present (they are durable and the roll will carry them into a final
file; invariant 1 says exactly that) and are shown separately.

An output that keeps N days (a lifecycle rule expiring old final files, README "Keeping N days of
output") no longer holds what Kafka may still hold below it: ``since`` (``--since 7d``, an ISO
time or ``P=OFFSET,…``) checks for loss only from there on. Duplicates, overlaps and files are
checked everywhere, since an expired file takes its rows with it but never adds any.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from consumer import first_contact
from consumer import log as logmod
from consumer.bucketing import Template, TemplateError, assign, parse_template, time_column, to_millis
from consumer.inspect import human_bytes, parquet_metadata
from consumer.kafka_names import login_refused
from consumer.layout import MOVED_IN, Layout, PieceRef, check_topic_name
from consumer.parquet_merge import ParquetMergeError, read_key_value_metadata, read_piece_layout
from consumer.storage import ObjectInfo, ObjectStore, StorageError, first_request

TAIL = 64 * 1024
OFFSET_COLUMN = "kafka_offset"
PARTITION_COLUMN = "kafka_partition"
MAX_LISTED = 100  # offsets / ranges / keys shown per list; counts are always complete
_COALESCE_GAP = 256 * 1024  # fetch two column chunks with one GET when less than this lies between
_WHOLE_OBJECT = 256 * 1024  # objects up to this size are read with one GET
_EMPTY = pa.array([], pa.int64())


class VerifyError(ValueError):
    """A usage problem (unknown topic, unreachable broker, bad arguments): exit status 2."""


# -- reports -------------------------------------------------------------------------------------


@dataclass
class PartitionReport:
    """What one partition's output holds compared with what Kafka holds below ``committed``."""

    topic: str
    partition: int
    committed: int | None  # group's committed position (or given, or the high watermark)
    expected: int  # offsets Kafka holds in [low watermark, committed)
    present: int  # distinct offsets found in final files
    missing: list[tuple[int, int]] = field(default_factory=list)  # ranges [a, b) expected but absent
    duplicated: list[int] = field(default_factory=list)  # first MAX_LISTED offsets in > 1 final row
    duplicate_count: int = 0  # extra rows: rows of final files − distinct offsets
    beyond_committed: int = 0  # distinct offsets in final files at/after ``committed`` (informational)
    files: int = 0
    rows: int = 0
    low_watermark: int | None = None
    high_watermark: int | None = None
    missing_count: int = 0  # expected offsets absent (``missing`` lists only the first ranges)
    missing_ranges: int = 0
    staged: int = 0  # expected offsets found only in staged pieces (durable, not yet rolled)
    dead_letters: int = 0  # expected offsets found only in dead-letter objects
    beyond_end: int = 0  # offsets in final files at/after the high watermark: Kafka never had them
    checked_from: int | None = None  # ``since``: loss is checked from this offset on, not the log start

    @property
    def ok(self) -> bool:
        return self.missing_count == 0 and self.duplicate_count == 0 and self.beyond_end == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "partition": self.partition, "ok": self.ok,
            "committed": self.committed, "low_watermark": self.low_watermark,
            "high_watermark": self.high_watermark, "expected": self.expected, "present": self.present,
            "missing_count": self.missing_count, "missing_ranges": self.missing_ranges,
            "missing": [list(r) for r in self.missing], "duplicate_count": self.duplicate_count,
            "duplicated": self.duplicated, "beyond_committed": self.beyond_committed,
            "beyond_end": self.beyond_end, "staged": self.staged, "dead_letters": self.dead_letters,
            "files": self.files, "rows": self.rows, "checked_from": self.checked_from,
        }

    def to_line(self) -> str:
        parts = [
            f"{self.topic}[{self.partition}]", "OK  " if self.ok else "FAIL",
            f"committed={_fmt(self.committed)}",
            *([f"from={self.checked_from}"] if self.checked_from is not None else []),
            f"expected={self.expected}",
            f"present={self.present}", f"files={self.files}", f"rows={self.rows}",
        ]
        if self.staged:
            parts.append(f"staged-only={self.staged}")
        if self.dead_letters:
            parts.append(f"dead-lettered={self.dead_letters}")
        if self.missing_count:
            shown = ", ".join(f"[{a}, {b})" for a, b in self.missing[:5])
            more = f" +{self.missing_ranges - 5} more ranges" if self.missing_ranges > 5 else ""
            parts.append(f"MISSING={self.missing_count} in {self.missing_ranges} range(s): {shown}{more}")
        if self.duplicate_count:
            shown = ", ".join(map(str, self.duplicated[:5]))
            more = ", …" if len(self.duplicated) > 5 else ""
            parts.append(f"DUPLICATED={self.duplicate_count} extra rows, offsets {shown}{more}")
        if self.beyond_end:
            parts.append(f"BEYOND-END={self.beyond_end} offsets ≥ high watermark {self.high_watermark}")
        if self.beyond_committed:
            parts.append(f"ahead-of-committed={self.beyond_committed}")
        return "  ".join(parts)


@dataclass
class VerifyReport:
    partitions: list[PartitionReport]
    bad_files: list[tuple[str, str]]  # (key, reason)
    staging_objects: list[str]  # every object under _staging for the topic
    dead_letters: int  # records in _dead_letters objects (they count as present)
    allow_staging: bool = False
    source: str = ""  # s3://bucket/prefix, for the report header
    topic: str = ""
    positions_from: str = ""  # where committed positions came from
    expected_from: str = ""  # "kafka" or "contiguous"
    elapsed_s: float = 0.0
    bytes_read: int = 0
    requests: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (
            all(p.ok for p in self.partitions)
            and not self.bad_files
            and (self.allow_staging or not self.staging_objects)
        )

    @property
    def files(self) -> int:
        return sum(p.files for p in self.partitions)

    @property
    def offsets_checked(self) -> int:
        return sum(p.rows for p in self.partitions)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "source": self.source, "topic": self.topic,
            "positions_from": self.positions_from, "expected_from": self.expected_from,
            "partitions": [p.to_json() for p in self.partitions],
            "bad_files": [{"key": k, "reason": r} for k, r in self.bad_files],
            "staging_objects": self.staging_objects, "allow_staging": self.allow_staging,
            "dead_letters": self.dead_letters, "notes": self.notes,
            "stats": {"elapsed_s": round(self.elapsed_s, 3), "files": self.files,
                      "rows": self.offsets_checked, "bytes_read": self.bytes_read,
                      "requests": self.requests},
        }

    def to_text(self) -> str:
        lines = [
            f"verify {self.source} topic {self.topic}: positions from {self.positions_from}, "
            f"expected offsets from {self.expected_from}"
        ]
        lines.extend("  " + p.to_line() for p in self.partitions)
        if self.bad_files:
            lines.append(f"BAD FILES ({len(self.bad_files)}):")
            lines.extend(f"  {k}: {r}" for k, r in self.bad_files[:MAX_LISTED])
            if len(self.bad_files) > MAX_LISTED:
                lines.append(f"  … and {len(self.bad_files) - MAX_LISTED} more")
        if self.staging_objects:
            verdict = "allowed (--allow-staging)" if self.allow_staging else (
                "a consumer is running or stopped mid-file; pass --allow-staging if so")
            lines.append(f"staging objects ({len(self.staging_objects)}): {verdict}")
            lines.extend(f"  {k}" for k in self.staging_objects[:10])
            if len(self.staging_objects) > 10:
                lines.append(f"  … and {len(self.staging_objects) - 10} more")
        if self.dead_letters:
            lines.append(f"dead letters: {self.dead_letters} records (count as present)")
        lines.extend(f"note: {n}" for n in self.notes)
        missing = sum(p.missing_count for p in self.partitions)
        dups = sum(p.duplicate_count for p in self.partitions)
        rate = self.offsets_checked / self.elapsed_s if self.elapsed_s > 0 else 0.0
        lines.append(
            f"{'OK' if self.ok else 'FAILED'}: {len(self.partitions)} partitions, {self.files} final files, "
            f"{self.offsets_checked} rows; {missing} missing, {dups} duplicated, "
            f"{len(self.bad_files)} bad files, {len(self.staging_objects)} staging objects "
            f"({self.elapsed_s:.2f}s, {self.requests} S3 requests, {human_bytes(self.bytes_read)} read, "
            f"{rate:,.0f} rows/s)"
        )
        return "\n".join(lines)


def _fmt(v: int | None) -> str:
    return "-" if v is None else str(v)


def parse_committed(text: str) -> dict[int, int]:
    """``'0=123,1=456'`` → ``{0: 123, 1: 456}`` (the CLI's ``--committed``)."""
    out: dict[int, int] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        p, sep, o = item.partition("=")
        try:
            if not sep:
                raise ValueError
            part, off = int(p), int(o)
        except ValueError:
            raise VerifyError(f"--committed item {item!r}: use PARTITION=OFFSET, e.g. 0=123,1=456") from None
        if part < 0 or off < 0:
            raise VerifyError(f"--committed item {item!r}: partition and offset must be ≥ 0")
        out[part] = off
    if not out:
        raise VerifyError("--committed is empty: use PARTITION=OFFSET, e.g. 0=123,1=456")
    return out


@dataclass(frozen=True)
class Since:
    """Where checking for loss starts (``--since``): per partition offsets, or the first offset
    whose timestamp is at or after ``timestamp_ms`` (Kafka's offsets-for-times)."""

    text: str
    offsets: dict[int, int] | None = None
    timestamp_ms: int | None = None


_SINCE_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float) -> Since:
    """``'7d'`` / ``'36h'`` (that long before ``now``, Unix seconds), an ISO time (UTC unless it
    says otherwise), ``'ts:<ms>'`` or ``'0=100,1=250'`` → :class:`Since` (the CLI's ``--since``)."""
    from datetime import UTC, datetime

    text = text.strip()
    if "=" in text:
        try:
            return Since(text, offsets=parse_committed(text))
        except VerifyError as exc:
            raise VerifyError(str(exc).replace("--committed", "--since")) from None
    if text.startswith("ts:") and text[3:].isdigit():
        return Since(text, timestamp_ms=int(text[3:]))
    if len(text) > 1 and text[-1] in _SINCE_UNITS and text[:-1].replace(".", "", 1).isdigit():
        return Since(text, timestamp_ms=int((now - float(text[:-1]) * _SINCE_UNITS[text[-1]]) * 1000))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise VerifyError(
            f"--since {text!r} not understood: use a duration (7d, 36h, 90m), an ISO time "
            "(2026-12-01T00:00:00Z), ts:<epoch ms> or PARTITION=OFFSET,…"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return Since(text, timestamp_ms=int(moment.timestamp() * 1000))


# -- reading offsets out of Parquet objects ------------------------------------------------------


class _SparseFile(io.RawIOBase):
    """A read-only file of ``size`` bytes of which only some ranges were fetched.

    pyarrow reads a column chunk with one ReadAt of exactly its byte range; handing it this object
    (with the already-parsed footer) makes it decode just the offset columns from the ranges we
    fetched — any read outside them falls back to a ranged GET so correctness never depends on it.
    """

    def __init__(self, size: int, chunks: list[tuple[int, bytes]],
                 fetch: Callable[[int, int], bytes]) -> None:
        super().__init__()
        self._size, self._chunks, self._fetch, self._pos = size, sorted(chunks), fetch, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = base + offset
        return self._pos

    def read(self, n: int | None = -1) -> bytes:
        start = self._pos
        end = self._size if n is None or n < 0 else min(self._size, start + n)
        self._pos = end
        if end <= start:
            return b""
        out, pos = b"", start
        for cstart, data in self._chunks:  # sorted by start; a read may span adjacent chunks
            if cstart <= pos < cstart + len(data):
                out += data[pos - cstart:min(end, cstart + len(data)) - cstart]
                pos = start + len(out)
                if pos >= end:
                    return out
        return out + self._fetch(pos, end)

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[:len(data)] = data
        return len(data)


@dataclass
class _FileOffsets:
    key: str
    rows: int = 0
    offsets: pa.Array | None = None  # int64, one per row
    kv: dict[str, str] = field(default_factory=dict)
    error: str | None = None  # not readable at all: its rows count as absent
    problems: list[str] = field(default_factory=list)  # readable but inconsistent


def _column_ranges(md: Any, names: Sequence[str]) -> tuple[list[int], list[tuple[int, int]]]:
    """(leaf column indices, byte ranges of their chunks in every row group) of top-level ``names``."""
    schema = md.schema
    indices = [i for i in range(len(schema)) if schema.column(i).path in names]
    ranges = []
    for rg in range(md.num_row_groups):
        group = md.row_group(rg)
        for i in indices:
            col = group.column(i)
            start = col.data_page_offset
            if col.has_dictionary_page and col.dictionary_page_offset is not None:
                start = min(start, col.dictionary_page_offset)
            ranges.append((start, start + col.total_compressed_size))
    return indices, ranges


def _coalesce(ranges: Iterable[tuple[int, int]], gap: int = _COALESCE_GAP) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in sorted(ranges):
        if out and a - out[-1][1] <= gap:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def _uncovered(ranges: Iterable[tuple[int, int]], cached_from: int) -> list[tuple[int, int]]:
    """The parts of ``ranges`` before ``cached_from`` (bytes from there to the end are in hand)."""
    return [(a, min(b, cached_from)) for a, b in ranges if a < cached_from]


def _read_offsets(store: ObjectStore, key: str, size: int, partition: int) -> _FileOffsets:
    """Footer + the offset/partition column chunks of one Parquet object (final file or piece)."""
    res = _FileOffsets(key)
    try:
        # Small objects in one GET (latency, not bytes, is the cost); otherwise the tail, which often
        # already holds the last row group's offset chunks since the kafka columns come last.
        start = 0 if size <= _WHOLE_OBJECT else max(0, size - TAIL)
        tail = store.get(key, start, size)
        try:
            lay = read_piece_layout(tail, size)
        except ParquetMergeError as exc:
            if not exc.needed or exc.needed <= len(tail):
                raise
            start = max(0, size - exc.needed)
            tail = store.get(key, start, size)
            lay = read_piece_layout(tail, size)
        footer, res.rows = lay.footer, lay.num_rows
        res.kv = read_key_value_metadata(footer)
        md = parquet_metadata(footer)
    except FileNotFoundError:
        res.error = "vanished while being read (a concurrent roll or cleanup?)"
        return res
    except StorageError:
        raise  # S3 refused or failed the read: nothing is known of the file (cmd_verify: exit 2)
    except Exception as exc:  # any decoding failure means readers cannot read it either
        res.error = f"not a readable Parquet file: {type(exc).__name__}: {exc}"
        return res
    names = [n for n in (OFFSET_COLUMN, PARTITION_COLUMN) if n in md.schema.names]
    if OFFSET_COLUMN not in names:
        res.error = (f"no {OFFSET_COLUMN} column, offsets cannot be checked (the consumer must keep "
                     f"--kafka-columns partition,offset)")
        return res
    try:
        _, ranges = _column_ranges(md, names)
        chunks = [(start, tail)]
        chunks += [(a, store.get(key, a, b)) for a, b in _coalesce(_uncovered(ranges, start))]
        sparse = _SparseFile(size, chunks, lambda a, b: store.get(key, a, b))
        pf = pq.ParquetFile(pa.PythonFile(sparse, mode="r"), metadata=md, pre_buffer=False)
        table = pf.read(columns=names, use_threads=False)
    except FileNotFoundError:
        res.error = "vanished while being read (a concurrent roll or cleanup?)"
        return res
    except StorageError:
        raise
    except Exception as exc:
        res.error = f"offset column unreadable: {type(exc).__name__}: {exc}"
        return res
    offsets = table.column(OFFSET_COLUMN).combine_chunks().cast(pa.int64())
    if offsets.null_count:
        res.problems.append(f"{offsets.null_count} rows have a null {OFFSET_COLUMN}")
        offsets = offsets.drop_null()
    if len(offsets) != res.rows:
        res.problems.append(f"footer says {res.rows} rows but {len(offsets)} offsets were read")
    if PARTITION_COLUMN in names:
        parts = table.column(PARTITION_COLUMN)
        wrong = len(parts) - pc.sum(pc.equal(parts, partition)).as_py() if len(parts) else 0
        if wrong:
            res.problems.append(f"{wrong} rows have {PARTITION_COLUMN} != {partition}")
    res.offsets = offsets
    return res


def _check_final(f: _FileOffsets, topic: str, partition: int, first: int) -> tuple[int, int] | None:
    """Add metadata problems of a final file to ``f.problems``; its [from, to) range if it has one."""
    kv = f.kv
    if kv.get("kafka.topic", topic) != topic:
        f.problems.append(f"kafka.topic metadata is {kv['kafka.topic']!r}, not {topic!r}")
    if kv.get("kafka.partition", str(partition)) != str(partition):
        f.problems.append(f"kafka.partition metadata is {kv['kafka.partition']}, not {partition}")
    try:
        lo, hi = int(kv["kafka.from_position"]), int(kv["kafka.to_position"])
    except (KeyError, ValueError):
        f.problems.append("kafka.from_position/kafka.to_position metadata missing or not integers")
        return None
    if lo != first:
        f.problems.append(f"name says first position {first} but kafka.from_position is {lo}")
    if hi <= lo:
        f.problems.append(f"empty or inverted position range [{lo}, {hi})")
    if f.offsets is not None and len(f.offsets):
        mn, mx = pc.min_max(f.offsets).values()
        if mn.as_py() < lo or mx.as_py() >= hi:
            f.problems.append(
                f"offsets [{mn.as_py()}, {mx.as_py()}] not inside kafka positions [{lo}, {hi})")
    return lo, hi


# -- set logic on Arrow arrays -------------------------------------------------------------------


def _sorted(arr: pa.Array) -> pa.Array:
    return arr.take(pc.sort_indices(arr)) if len(arr) else arr


def _duplicates(sorted_arr: pa.Array) -> tuple[int, pa.Array]:
    """(extra rows, sorted distinct offsets) of a sorted offsets array — neighbours compared."""
    n = len(sorted_arr)
    if n < 2:
        return 0, sorted_arr
    same = pc.equal(sorted_arr.slice(1), sorted_arr.slice(0, n - 1))
    extra = int(pc.sum(same).as_py() or 0)
    if not extra:
        return 0, sorted_arr
    keep = pa.concat_arrays([pa.array([True]), pc.invert(same)])
    return extra, sorted_arr.filter(keep)


def _runs(values: pa.Array, mask_missing: pa.Array) -> tuple[int, list[tuple[int, int]], int]:
    """Compress the expected ``values`` flagged missing into ranges [a, b) of *expected* offsets.

    Consecutive missing entries of the expected sequence form one range even when Kafka has gaps
    between them (compaction), so a lost row group shows as one range, not thousands.
    Returns (missing count, first MAX_LISTED ranges, number of ranges).
    """
    idx = pc.indices_nonzero(mask_missing)
    count = len(idx)
    if not count:
        return 0, [], 0
    breaks = [0]
    if count > 1:
        step = pc.not_equal(pc.subtract(idx.slice(1), idx.slice(0, count - 1)), 1)
        breaks += [int(i) + 1 for i in pc.indices_nonzero(step).to_pylist()]
    ranges = []
    for j, b in enumerate(breaks[:MAX_LISTED]):
        end_i = (breaks[j + 1] if j + 1 < len(breaks) else count) - 1
        a = values[idx[b].as_py()].as_py()
        z = values[idx[end_i].as_py()].as_py()
        ranges.append((a, z + 1))
    return count, ranges, len(breaks)


def _contiguous_missing(
    distinct: pa.Array, low: int, committed: int
) -> tuple[int, list[tuple[int, int]], int]:
    """Missing ranges of [low, committed) given sorted distinct offsets: the gaps between them."""
    inside = distinct.filter(pc.and_(pc.greater_equal(distinct, low), pc.less(distinct, committed)))
    bounds = pa.concat_arrays([pa.array([low - 1], pa.int64()), inside, pa.array([committed], pa.int64())])
    n = len(bounds)
    gaps = pc.subtract(bounds.slice(1), bounds.slice(0, n - 1))
    where = pc.indices_nonzero(pc.greater(gaps, 1))
    count = committed - low - len(inside)
    ranges = []
    for i in where.to_pylist()[:MAX_LISTED]:
        ranges.append((bounds[i].as_py() + 1, bounds[i + 1].as_py()))
    return count, ranges, len(where)


# -- Kafka ---------------------------------------------------------------------------------------


class _Kafka:
    """Metadata, watermarks, a group's committed offsets and the offsets a log holds — read-only.

    The group is never joined: ``committed()`` is an OffsetFetch request, so verifying against a
    live group does not trigger a rebalance. Expected offsets are read with manual assignment and
    auto-commit off under a throwaway group id that never commits, so nothing is left behind.
    """

    def __init__(self, bootstrap: str, topic: str, extra: Mapping[str, str] | None) -> None:
        from confluent_kafka import Consumer

        self.topic = topic
        self.bootstrap = bootstrap
        #: librdkafka's own lines: off the terminal (the report is the output); the first error
        #: explains a failed request
        self.lines = logmod.ClientLines()
        self.base: dict[str, Any] = {"bootstrap.servers": bootstrap, **(extra or {}), "logger": self.lines,
                                     "error_cb": self.lines.error}
        throwaway = {"group.id": f"consumer-verify-{uuid.uuid4().hex[:12]}", "enable.auto.commit": False}
        self.meta = self.lines.watch(Consumer({**self.base, **throwaway}))

    def close(self) -> None:
        self.meta.close()

    def partitions(self) -> list[int]:
        """The topic's partitions: its first request, which a refused login or certificate, or a
        connection every broker refused, ends at once (consumer.first_contact) instead of after
        the whole 15 s."""
        md = first_contact.metadata(self.meta, 15.0, self._answered, self.topic)
        t = md.topics.get(self.topic)
        if t is None or t.error is not None or not t.partitions:
            why = t.error if t is not None and t.error is not None else "no partitions"
            raise VerifyError(f"topic {self.topic!r} not found in Kafka ({why})")
        return sorted(t.partitions)

    def _answered(self) -> bool:
        """Whether the cluster's answer so far will not change by waiting: a refusal, or no broker
        taking the connection (nothing listens at the address: a question for the operator)."""
        return self.refusal() is not None or self.lines.every_broker_down

    def refusal(self) -> str | None:
        """The client's own words for a login or certificate the cluster refused, among its error
        events so far; None if none is one."""
        with contextlib.suppress(Exception):
            self.meta.poll(0)
        for event in self.lines.events:
            if login_refused(event.code(), str(event.str())) is not None:
                return str(event.str())
        return None

    def watermarks(self, partition: int) -> tuple[int, int]:
        from confluent_kafka import TopicPartition

        low, high = self.meta.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=15,
                                                    cached=False)
        return int(low), int(high)

    def offsets_for_times(self, partitions: Sequence[int], timestamp_ms: int) -> dict[int, int | None]:
        """The first offset of each partition whose timestamp is at or after ``timestamp_ms``; None
        when no record is that recent."""
        from confluent_kafka import TopicPartition

        asked = [TopicPartition(self.topic, p, timestamp_ms) for p in partitions]
        found = self.meta.offsets_for_times(asked, timeout=15)
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in found}

    def committed(self, group_id: str, partitions: Sequence[int]) -> dict[int, int | None]:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({**self.base, "group.id": group_id, "enable.auto.commit": False})
        try:
            tps = c.committed([TopicPartition(self.topic, p) for p in partitions], timeout=15)
        finally:
            c.close()
        return {tp.partition: (tp.offset if tp.offset >= 0 else None) for tp in tps}

    def offsets(self, ranges: Mapping[int, tuple[int, int]], timeout_s: float = 300.0) -> dict[int, pa.Array]:
        """The offsets the log holds in each partition's [start, end), read_committed like the consumer."""
        from confluent_kafka import Consumer, KafkaError, TopicPartition

        todo = {p: r for p, r in ranges.items() if r[1] > r[0]}
        out: dict[int, list[int]] = {p: [] for p in ranges}
        if not todo:
            return {p: _EMPTY for p in ranges}
        c = Consumer({
            **self.base, "group.id": f"consumer-verify-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False, "enable.partition.eof": True, "auto.offset.reset": "earliest",
            "isolation.level": "read_committed", "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024, "queued.max.messages.kbytes": 64 * 1024,
        })
        try:
            c.assign([TopicPartition(self.topic, p, s) for p, (s, _e) in todo.items()])
            deadline = time.monotonic() + timeout_s
            while todo:
                if time.monotonic() > deadline:
                    raise VerifyError(f"reading offsets from Kafka did not finish in {timeout_s:.0f}s; "
                                      f"partitions left: {sorted(todo)}")
                done: set[int] = set()
                for msg in c.consume(num_messages=10000, timeout=1.0):
                    p = int(msg.partition() or 0)
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            done.add(p)
                            continue
                        if err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
                            # its throwaway group, which it never joins nor commits to: a principal
                            # whose ACLs name the run's group only may still read the topic
                            continue
                        raise VerifyError(f"Kafka error reading {self.topic}[{p}]: {err}")
                    if p not in todo:
                        continue
                    o = int(msg.offset() or 0)
                    end = todo[p][1]
                    if o < end:
                        out[p].append(o)
                    if o >= end - 1:
                        done.add(p)
                # Offsets at the end of the range may be transaction markers: the position tells.
                for tp in c.position([TopicPartition(self.topic, p) for p in todo]):
                    if tp.offset >= 0 and tp.offset >= todo[tp.partition][1]:
                        done.add(tp.partition)
                finished = [p for p in done if p in todo]
                if finished:
                    c.pause([TopicPartition(self.topic, p) for p in finished])
                    for p in finished:
                        del todo[p]
        finally:
            c.close()
        return {p: pa.array(v, pa.int64()) for p, v in out.items()}


# -- the check -----------------------------------------------------------------------------------


@dataclass
class _Listed:
    """One output's objects of the topic, listed and sorted by partition: the verified output, or
    one given with it (``with_outputs``: where the group wrote before ``--output`` moved), whose
    keys are reported with its ``label`` (``s3://bucket/prefix/``) in front."""

    store: ObjectStore
    label: str
    dead_root: str
    staging: list[ObjectInfo]
    dead: list[ObjectInfo]
    finals: dict[int, list[tuple[ObjectInfo, int]]] = field(default_factory=dict)
    pieces: dict[int, list[ObjectInfo]] = field(default_factory=dict)
    bucket_of: dict[str, str] = field(default_factory=dict)  # final key → its bucket path ("" if plain)
    bad: list[tuple[str, str]] = field(default_factory=list)
    dead_partitions: set[int] = field(default_factory=set)

    def offsets(self, obj: ObjectInfo, partition: int) -> _FileOffsets:
        res = _read_offsets(self.store, obj.key, obj.size, partition)
        res.key = self.label + res.key
        return res

    def dead_letters(self, workers: int) -> dict[int, set[int]]:
        return _read_dead_letters(self.store, self.dead, self.dead_root, workers)

    def check_bucket(self, key: str, template: Template) -> tuple[str, str] | None:
        problem = _check_bucket(self.store, key, self.bucket_of[key], template)
        return None if problem is None else (self.label + problem[0], problem[1])


def _output_label(store: ObjectStore, prefix: str) -> str:
    """``s3://bucket/prefix/``: how keys of an output given with the verified one are reported."""
    return f"s3://{getattr(store, 'bucket', '?')}/{prefix.strip('/')}".rstrip("/") + "/"


def _list_output(store: ObjectStore, prefix: str, topic: str, template: Template | None,
                 label: str) -> _Listed:
    """List ``topic``'s staging, dead letters and final files under ``prefix`` (in that order: see
    the module docstring) and sort them by partition; a final file whose name or folder readers
    would misread is bad."""
    layout = Layout(prefix)
    topic_dir = layout._join(f"topic={topic}") + "/"
    staging_root = layout._join("_staging", f"topic={topic}") + "/"
    dead_root = layout._join("_dead_letters", f"topic={topic}") + "/"
    staging = store.list(staging_root)
    dead = store.list(dead_root)
    finals = store.list(topic_dir)
    out = _Listed(store, label, dead_root, staging, dead)
    for obj in finals:
        if not obj.key.endswith(".parquet"):
            continue  # readers ignore it too (e.g. _SUCCESS); only .parquet objects are data
        parsed = Layout.parse_final_name(obj.key)
        bucket, part_of_dir = _bucket_partition(obj.key, topic_dir)
        if parsed is None or part_of_dir is None or parsed[0] != topic or parsed[1] != part_of_dir:
            out.bad.append((label + obj.key, "unexpected .parquet object: its name/directory is not "
                            f"topic={topic}/partition=<p>/{topic}+<p>+<first 20 digits>.parquet, "
                            "yet readers will read it"))
            continue
        if bucket and (template is None or Layout.bucket_names(bucket) != template.names):
            expected = f"--partition-by {template.text}" if template else "the plain layout"
            out.bad.append((label + obj.key, f"bucket folder {bucket!r} does not match {expected} "
                            "(pass the run's --partition-by to verify a time-bucketed layout)"))
            continue
        out.bucket_of[obj.key] = bucket
        out.finals.setdefault(parsed[1], []).append((obj, parsed[2]))
    for obj in staging:
        sp = _partition_of(obj.key, staging_root)
        ref = layout.parse_staging_key(topic, sp, obj.key, obj.size) if sp is not None else None
        if sp is not None and isinstance(ref, PieceRef):
            out.pieces.setdefault(sp, []).append(obj)
    out.dead_partitions = {p for p in (_partition_of(o.key, dead_root) for o in dead) if p is not None}
    return out


def verify(
    store: ObjectStore,
    prefix: str,
    topic: str,
    *,
    bootstrap_servers: str | None = None,
    group_id: str | None = None,
    committed: Mapping[int, int] | None = None,
    kafka_config: Mapping[str, str] | None = None,
    contiguous: bool = False,
    allow_staging: bool = False,
    workers: int = 32,
    partition_by: str | None = None,
    timezone: str = "UTC",
    since: Since | None = None,
    with_outputs: Sequence[tuple[ObjectStore, str]] = (),
) -> VerifyReport:
    """Check ``topic``'s output under ``prefix`` (see the module docstring for what and why).

    Committed positions: ``committed`` if given, else ``group_id``'s committed offsets, else the
    high watermarks (everything Kafka holds must be there). Without ``bootstrap_servers`` only the
    files are checked (duplicates, bad files, staging; missing only against ``committed`` with
    ``contiguous=True`` semantics from offset 0, since the log cannot be asked). ``since``: loss
    is checked only from there on (output kept N days; see the module docstring).
    ``with_outputs``: (store, prefix) of other outputs the same group wrote this topic to before
    ``--output`` moved (README, *Moving --output*): their files count as this output's, so an offset
    in one of them is not missing, and one in two is a duplicate.
    """
    t0 = time.monotonic()
    check_topic_name(topic)
    try:
        template = parse_template(partition_by, timezone) if partition_by else None
    except TemplateError as exc:
        raise VerifyError(str(exc)) from exc
    prefix = prefix.strip("/")
    layout = Layout(prefix)
    stores = list({id(s): s for s in [store, *(o for o, _ in with_outputs)]}.values())
    req0 = sum(sum(s.stats.requests.values()) for s in stores)
    bytes0 = sum(s.stats.bytes_downloaded for s in stores)
    notes: list[str] = []
    kafka = _Kafka(bootstrap_servers, topic, kafka_config) if bootstrap_servers else None
    try:
        # 1. Positions first (see module docstring: this order makes a live consumer safe to check).
        partitions: list[int] | None = kafka.partitions() if kafka else None
        lows: dict[int, int] = {}
        highs_before: dict[int, int] = {}
        if kafka and partitions is not None:
            for p in partitions:
                lows[p], highs_before[p] = kafka.watermarks(p)
        if committed is not None:
            positions: dict[int, int | None] = dict(committed)
            positions_from = "given positions"
        elif group_id and kafka and partitions is not None:
            positions = kafka.committed(group_id, partitions)
            positions_from = f"group {group_id!r} committed offsets"
        elif kafka:
            positions = dict(highs_before)
            positions_from = "end offsets (high watermarks)"
        else:
            positions = {}
            positions_from = "nothing (no broker and no positions: only duplicates and files checked)"
        if group_id and not kafka and committed is None:
            raise VerifyError("--group-id needs --bootstrap-servers to read the group's committed offsets")
        starts: dict[int, int] = {}  # where loss is checked from, per partition (``since``)
        if since is not None and since.offsets is not None:
            starts = dict(since.offsets)
        elif since is not None:
            if not kafka or partitions is None:
                raise VerifyError(f"--since {since.text} needs --bootstrap-servers: Kafka says which "
                                  "offset that time is (or give PARTITION=OFFSET,…)")
            found_at = kafka.offsets_for_times(partitions, since.timestamp_ms or 0)
            starts = {p: highs_before[p] if o is None else o for p, o in found_at.items()}
        if since is not None:
            notes.append(f"--since {since.text}: loss is checked from each partition's 'from' on "
                         "(output expired below it); duplicates and files everywhere")

        # 2. Staging, then dead letters, then final files, of this output and each one given with it.
        for reached, under in [(store, prefix), *with_outputs]:  # nothing listening: said at once
            first_request(reached, f"{under.strip('/')}/" if under.strip("/") else "")
        outputs = [_list_output(store, prefix, topic, template, "")]
        named = [_output_label(store, prefix)]
        for other_store, other_prefix in with_outputs:
            label = _output_label(other_store, other_prefix)
            if label in named:
                raise VerifyError(f"--with-output {label.rstrip('/')} is named twice (or is --output "
                                  "itself): give each other output the group wrote to once")
            named.append(label)
            outputs.append(_list_output(other_store, other_prefix.strip("/"), topic, template, label))
        bad = [b for o in outputs for b in o.bad]

        if partitions is None:
            found = set(positions)
            for listed in outputs:
                found |= set(listed.finals) | set(listed.pieces) | listed.dead_partitions
            partitions = sorted(found)
        else:
            for listed in outputs:
                for p in sorted(set(listed.finals) - set(partitions)):
                    for obj, _ in listed.finals.pop(p):
                        bad.append((listed.label + obj.key,
                                    f"partition {p} does not exist in Kafka's topic {topic!r}"))

        # 3. Read footers and offset columns concurrently.
        jobs: list[tuple[str, int, ObjectInfo, int, _Listed]] = []
        for listed in outputs:
            for p, finals_of_p in listed.finals.items():
                jobs.extend(("final", p, o, first, listed) for o, first in finals_of_p)
            for p, pieces_of_p in listed.pieces.items():
                jobs.extend(("piece", p, o, -1, listed) for o in pieces_of_p)
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            results = list(pool.map(lambda j: j[4].offsets(j[2], j[1]), jobs))
            if template is not None:
                wrong = pool.map(lambda j: j[4].check_bucket(j[2].key, template),
                                 [j for j in jobs if j[0] == "final"])
                for problem in wrong:
                    if problem is not None:
                        bad.append(problem)
        dead_by_part: dict[int, set[int]] = {}
        for listed in outputs:
            for p, found_dead in listed.dead_letters(workers).items():
                dead_by_part.setdefault(p, set()).update(found_dead)
        # final key (labelled) → (its output's label, its bucket path): files are swept per both
        bucket_of = {listed.label + k: (listed.label, b)
                     for listed in outputs for k, b in listed.bucket_of.items()}

        # 4. Positions the log holds: watermarks after listing (they only grow) for "beyond end".
        highs_after: dict[int, int] = {}
        if kafka:
            for p in partitions:
                highs_after[p] = kafka.watermarks(p)[1]
        expected_by_part: dict[int, pa.Array] = {}
        if kafka and not contiguous:
            want = {p: (max(lows.get(p, 0), starts.get(p, 0)), positions.get(p) or 0) for p in partitions}
            expected_by_part = kafka.offsets({p: (a, b) for p, (a, b) in want.items()})
            expected_from = "Kafka (offsets read from the log)"
        else:
            expected_from = "contiguous [low watermark, committed)" if kafka else (
                "contiguous [0, committed)")
            if not kafka:
                notes.append("no broker: offsets below the low watermark cannot be told apart from loss; "
                             "missing counts assume the log starts at 0")
    except Exception as exc:
        if kafka is None or logmod.kafka_said(exc) is None:
            raise
        # not a finding about the output: a question Kafka did not answer (exit 2, not 1)
        if (refused := kafka.refusal()) is not None:
            raise VerifyError(
                f"Kafka at {kafka.bootstrap} refused this client ({refused}): check the -X security "
                "settings (`consumer check` tries them); nothing was verified"
            ) from exc
        taken = "took no connection" if kafka.lines.every_broker_down else "did not answer"
        raise VerifyError(
            f"Kafka at {kafka.bootstrap} {taken} ({kafka.lines.explain(exc)}): check "
            "--bootstrap-servers and that the brokers are reachable from here; nothing was verified"
        ) from exc
    finally:
        if kafka:
            kafka.close()

    # 5. Per partition set logic.
    final_results: dict[int, list[tuple[_FileOffsets, int]]] = {}
    piece_results: dict[int, list[_FileOffsets]] = {}
    for job, res in zip(jobs, results, strict=True):
        kind, p, _obj, first, _listed = job
        if kind == "final":
            final_results.setdefault(p, []).append((res, first))
        else:
            piece_results.setdefault(p, []).append(res)
            if res.error:
                notes.append(f"staged piece {res.key}: {res.error}")

    reports: list[PartitionReport] = []
    for p in partitions:
        arrays: list[pa.Array] = []
        files = rows = 0
        readable: list[tuple[_FileOffsets, tuple[int, int] | None]] = []
        for res, first in sorted(final_results.get(p, []), key=lambda t: t[1]):
            if res.error:
                bad.append((res.key, res.error))
                continue
            readable.append((res, _check_final(res, topic, p, first)))
        # Position ranges of one partition's files must not overlap (sorted sweep, running max end);
        # in the time-bucketed layout files of different buckets interleave, so per bucket (and per
        # output: each offset in one of them is checked below, as a duplicate).
        for bucket in sorted({bucket_of.get(res.key, ("", "")) for res, _ in readable}):
            reach: tuple[int, str] | None = None
            in_bucket = (t for t in readable
                         if t[1] is not None and bucket_of.get(t[0].key, ("", "")) == bucket)
            for res, rng in sorted(in_bucket, key=lambda t: t[1] or (0, 0)):
                assert rng is not None
                if reach is not None and rng[0] < reach[0]:
                    res.problems.append(
                        f"positions [{rng[0]}, {rng[1]}) overlap {reach[1]} (ending at {reach[0]})")
                if reach is None or rng[1] > reach[0]:
                    reach = (rng[1], res.key)
        for res, _rng in readable:
            if res.problems:
                bad.append((res.key, "; ".join(res.problems)))
            assert res.offsets is not None
            arrays.append(res.offsets)
            files += 1
            rows += len(res.offsets)

        all_final = _sorted(pa.concat_arrays(arrays)) if arrays else _EMPTY
        dup_count, distinct = _duplicates(all_final)
        duplicated: list[int] = []
        if dup_count:
            n = len(all_final)
            same = pc.equal(all_final.slice(1), all_final.slice(0, n - 1))
            dup_vals = pc.unique(all_final.slice(1).filter(same))
            duplicated = dup_vals.slice(0, MAX_LISTED).to_pylist()

        pos = positions.get(p)
        low = max(lows.get(p, 0), starts.get(p, 0))
        rep = PartitionReport(topic, p, pos, 0, len(distinct), files=files, rows=rows,
                              low_watermark=lows.get(p), high_watermark=highs_after.get(p),
                              duplicated=duplicated, duplicate_count=dup_count,
                              checked_from=low if since is not None else None)
        if pos is not None:
            rep.beyond_committed = int(pc.sum(pc.greater_equal(distinct, pos)).as_py() or 0)
        if p in highs_after:
            rep.beyond_end = int(pc.sum(pc.greater_equal(distinct, highs_after[p])).as_py() or 0)

        staged_arr = pa.concat_arrays([r.offsets for r in piece_results.get(p, []) if r.offsets is not None]
                                      or [_EMPTY])
        dead_arr = pa.array(sorted(dead_by_part.get(p, set())), pa.int64())
        covered = pc.unique(pa.concat_arrays([distinct, staged_arr, dead_arr]))
        if pos is None or pos <= low:
            rep.expected = 0
        elif p in expected_by_part:
            expected = expected_by_part[p]
            rep.expected = len(expected)
            missing_mask = pc.invert(pc.is_in(expected, value_set=covered))
            rep.missing_count, rep.missing, rep.missing_ranges = _runs(expected, missing_mask)
            in_final = pc.is_in(expected, value_set=distinct)
            rep.staged = _count_only(expected, in_final, staged_arr)
            in_staged = pc.is_in(expected, value_set=staged_arr)
            rep.dead_letters = _count_only(expected, pc.or_(in_final, in_staged), dead_arr)
        else:
            rep.expected = pos - low
            cov_sorted = _sorted(covered)
            rep.missing_count, rep.missing, rep.missing_ranges = _contiguous_missing(cov_sorted, low, pos)
            in_range = pc.and_(pc.greater_equal(staged_arr, low), pc.less(staged_arr, pos))
            rep.staged = int(pc.sum(pc.invert(pc.is_in(pc.unique(staged_arr.filter(in_range)),
                                                       value_set=distinct))).as_py() or 0)
        reports.append(rep)

    if since is None and any(r.missing_count for r in reports):
        rule = store.expires_current(layout._join(f"topic={topic}") + "/")
        if rule is not None:
            notes.append(f"a lifecycle {rule} expires final files here: offsets missing below the "
                         "oldest file it keeps may have expired, not been lost. Check from where it "
                         "keeps with --since (e.g. --since 29d for a 30-day rule)")
    if since is None and len(outputs) == 1:
        notes += _moved_here(store, layout, topic,
                             {r.partition: r.missing[0][0] for r in reports if r.missing})
    staging_keys = sorted(listed.label + o.key for listed in outputs for o in listed.staging)
    report = VerifyReport(
        partitions=reports, bad_files=bad, staging_objects=staging_keys,
        dead_letters=sum(len(s) for s in dead_by_part.values()), allow_staging=allow_staging,
        source=" + ".join([f"s3://{getattr(store, 'bucket', '?')}/{prefix}".rstrip("/"),
                           *(o.label.rstrip("/") for o in outputs[1:])]), topic=topic,
        positions_from=positions_from, expected_from=expected_from, notes=notes,
    )
    report.requests = sum(sum(s.stats.requests.values()) for s in stores) - req0
    report.bytes_read = sum(s.stats.bytes_downloaded for s in stores) - bytes0
    report.elapsed_s = time.monotonic() - t0
    return report


def _moved_here(store: ObjectStore, layout: Layout, topic: str,
                first_missing: Mapping[int, int]) -> list[str]:
    """Notes for partitions missing offsets below where the group moved to this output from another
    one (``_moved/``, consumer.worker.MovedIn): those are in that output, and verifying both as one
    (``--with-output``) is what checks them. Only then: a LIST for each partition missing
    offsets, and a GET for each one with a move above its first missing offset."""
    if not first_missing:
        return []
    moves: dict[int, tuple[int, str]] = {}
    for p, missing_from in first_missing.items():
        for o in store.list(layout.moved_dir(topic, p)):
            moved = Layout.parse_moved(o.key)
            newer = moved is not None and moved[0] > max(missing_from, moves.get(p, (-1, ""))[0])
            if moved is not None and moved[1] == MOVED_IN and newer:
                moves[p] = (moved[0], o.key)
    notes = []
    for p, (at, key) in sorted(moves.items()):
        try:
            came_from = json.loads(store.get(key)).get("from")
        except (FileNotFoundError, ValueError, AttributeError):
            came_from = None
        notes.append(f"partition {p}: the group moved to this output at offset {at} from "
                     f"{came_from or 'another output'} (--output changed): offsets below it are there. "
                     "Check both as one with --with-output " + (came_from or "<that output>"))
    return notes


def _count_only(expected: pa.Array, already: pa.Array, source: pa.Array) -> int:
    """Expected offsets not ``already`` covered that ``source`` holds."""
    if not len(source):
        return 0
    rest = expected.filter(pc.invert(already))
    return int(pc.sum(pc.is_in(rest, value_set=source)).as_py() or 0)


def _bucket_partition(key: str, root: str) -> tuple[str, int | None]:
    """``root + '[<bucket>/]partition=<p>/<name>'`` → (bucket, p); p None when not that shape."""
    if not key.startswith(root):
        return "", None
    parts = key[len(root):].split("/")
    if len(parts) < 2:
        return "", None
    bucket = "/".join(parts[:-2])
    return bucket, _partition_of("/".join(parts[-2:]), "")


def _check_bucket(store: ObjectStore, key: str, bucket: str, template: Template) -> tuple[str, str] | None:
    """Every row of a final file sits in the bucket its time says (reads the time column)."""
    column = "kafka_timestamp" if template.field_path is None else template.field_path[0]
    try:
        table = pq.read_table(io.BytesIO(store.get(key)), columns=[column])
        if template.field_path is None:
            millis = to_millis(table.column(column))
        else:
            batch = table.combine_chunks().to_batches()
            if not batch:
                return None
            millis = time_column(template, batch[0])
    except StorageError:
        raise
    except Exception as exc:
        return key, f"bucket time {template.source!r} unreadable: {type(exc).__name__}: {exc}"
    a = assign(template, millis)
    wrong = pc.sum(pc.fill_null(pc.not_equal(a.buckets, bucket), True)).as_py() if len(a.buckets) else 0
    if wrong:
        return key, f"{wrong} rows are not in bucket {bucket!r} by their time {template.source!r}"
    return None


def _partition_of(key: str, root: str) -> int | None:
    """``root + 'partition=<p>/…'`` → p."""
    if not key.startswith(root):
        return None
    head = key[len(root):].split("/", 1)[0]
    if not head.startswith("partition="):
        return None
    try:
        return int(head[len("partition="):])
    except ValueError:
        return None


def _read_dead_letters(store: ObjectStore, objs: Sequence[ObjectInfo], root: str,
                       workers: int) -> dict[int, set[int]]:
    """Offsets of dead-lettered records per partition (from the JSON lines' ``offset``)."""
    wanted = [o for o in objs if o.key.endswith(".jsonl") and _partition_of(o.key, root) is not None]

    def read(o: ObjectInfo) -> tuple[int, set[int]]:
        p = _partition_of(o.key, root)
        assert p is not None
        found: set[int] = set()
        for line in store.get(o.key).decode("utf-8", "replace").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                found.add(int(json.loads(line)["offset"]))
            except (ValueError, KeyError, TypeError):
                continue
        return p, found

    out: dict[int, set[int]] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for p, found in pool.map(read, wanted):
            out.setdefault(p, set()).update(found)
    return out
